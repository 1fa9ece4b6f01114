# What the test servers of scripts/control-plane.sh and scripts/crd-server.sh start and stop
# alike, on loopback: sourced by both, not run.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A port below the kernel's ephemeral range: a port taken from that range (bind to 0) can be
# handed out again, between our probe and the server's bind, as the source port of an outgoing
# connection -- the apiserver's own connections to etcd included.
free_port() {
  python3 - <<'PY'
import random, socket
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
pool = list(range(10000, lo)) if lo > 10100 else list(range(hi + 1, 65536))
random.shuffle(pool)
for port in pool[:200] + [0]:  # 0: no free port outside the range, take one inside it
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
PY
}

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

start_etcd() { # start_etcd DIR CLIENT_PORT PEER_PORT: data, log and pid in DIR
  local dir="$1" client="$2" peer="$3"
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$client" \
    --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" --log-level warn \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
}

# Tests pass their own PID so that nothing outlives the test binary, however it ends.
stop_after() { # stop_after OWNER_PID SCRIPT DIR: runs `SCRIPT stop DIR` and removes DIR once OWNER_PID is gone
  local owner="$1" self="$2" dir="$3"
  ( trap '' HUP; while kill -0 "$owner" 2>/dev/null; do sleep 1; done; "$self" stop "$dir"; rm -rf "$dir" ) \
    </dev/null >/dev/null 2>&1 &
}

stop_processes() { # stop_processes DIR NAME...: each NAME's DIR/NAME.pid, in that order
  local dir="$1" name pid; shift
  for name in "$@"; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$name.pid"
  done
}
