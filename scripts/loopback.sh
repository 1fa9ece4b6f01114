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

# Whether the etcd answering on PORT is the one named NAME (its only member).
etcd_is() { # etcd_is NAME PORT
  python3 - "$1" "$2" <<'PY'
import json, sys, urllib.request
name, port = sys.argv[1], sys.argv[2]
request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/cluster/member/list", data=b"{}", method="POST")
try:
    members = json.load(urllib.request.urlopen(request, timeout=2)).get("members", [])
except Exception:
    sys.exit(1)
sys.exit(0 if [m.get("name") for m in members] == [name] else 1)
PY
}

etcd_is_or_gone() { # etcd_is_or_gone NAME PORT PIDFILE
  etcd_is "$1" "$2" || ! kill -0 "$(cat "$3")" 2>/dev/null
}

# Another process can take a probed port before etcd binds it. An etcd that lost its port exits,
# and if the port went to another test server's etcd, that one answers in its place: an apiserver
# pointed at it would share the other's storage (one test's cleanup deleting another's objects).
# So the etcd answering must name itself as this one (DIR's name), or it starts again on other
# ports.
start_etcd() { # start_etcd DIR: data, log and pid in DIR; sets ETCD_PORT to its client port
  local dir="$1" name client peer attempt
  name="$(basename "$dir")"
  for attempt in 1 2 3; do
    client=$(free_port); peer=$(free_port)
    rm -rf "$dir/etcd" && mkdir -p "$dir/etcd"
    etcd --name "$name" --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$client" \
      --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$name=http://127.0.0.1:$peer" --log-level warn \
      >>"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    if wait_for 60 etcd_is_or_gone "$name" "$client" "$dir/etcd.pid" && etcd_is "$name" "$client" \
      && kill -0 "$(cat "$dir/etcd.pid")" 2>/dev/null; then
      ETCD_PORT=$client
      return 0
    fi
    echo "etcd did not start on port $client (attempt $attempt); see $dir/etcd.log" >&2
    stop_processes "$dir" etcd
  done
  return 1
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
