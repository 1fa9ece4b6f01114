#!/usr/bin/env python3
"""A small `helm` for the tests, on Helm's own Go library as shipped by helm-sdkpy.

    helm.py lint CHART [--strict] [VALUES]
    helm.py install RELEASE CHART NAMESPACE --kubeconfig K [--create-namespace] [--show-manifest] [VALUES]
    helm.py upgrade RELEASE CHART NAMESPACE --kubeconfig K [--reuse-values] [--show-manifest] [VALUES]
    helm.py uninstall RELEASE NAMESPACE --kubeconfig K [--wait]
    helm.py status RELEASE NAMESPACE --kubeconfig K
    helm.py template RELEASE CHART NAMESPACE --kubeconfig K [VALUES]

VALUES: any of --values FILE, --set k.e.y=v (v typed like helm: true/false/null/integers),
--set-string k=v, --set-json k=JSON; later ones win.

Exits 0 on success, 1 when Helm fails (the message on stderr), 2 on bad usage, 3 when helm-sdkpy
is missing (`make helm-deps` installs it).

Limits of helm-sdkpy 0.1.32 this works around:
- its Lint takes no values: `lint` with VALUES lints a temporary copy of the chart whose
  values.yaml is the chart's merged with VALUES;
- its Lint drops the text of each message (only severity and file are left): `lint` prints those,
  plus the schema violations found with the jsonschema module when it is installed;
- it cannot render without a cluster: `template` installs a throwaway release (wait=False),
  prints its manifest and its hooks (as `helm template` does) and uninstalls it again. CRDs the chart installs stay, as Helm's always do.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    import helm_sdkpy as helm
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"helm.py: {e}: install the test dependencies with `make helm-deps`", file=sys.stderr)
    sys.exit(3)

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
INT = re.compile(r"^[-+]?[0-9]+$")
FAIL_LOG = re.compile(r'funcMap fail message="((?:[^"\\]|\\.)*)"')


class Usage(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Values, the way `helm --values/--set` builds them.


def typed(text: str) -> Any:
    """A --set value: helm's strvals types true, false, null and integers; all else is a string."""
    if text == "true":
        return True
    if text == "false":
        return False
    if text == "null":
        return None
    if INT.match(text) and not (len(text.lstrip("+-")) > 1 and text.lstrip("+-").startswith("0")):
        return int(text)
    return text


def set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    keys = [k for k in re.split(r"(?<!\\)\.", dotted)]
    keys = [k.replace("\\.", ".") for k in keys]
    if not all(keys):
        raise Usage(f"bad key {dotted!r}")
    node = values
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def overlay(base: dict[str, Any], override: dict[str, Any], drop_null: bool = False) -> dict[str, Any]:
    """Maps merge key by key and anything else replaces, as helm combines values. A null is kept
    (it is what removes a chart default), unless `drop_null`: then it removes the key, as when
    helm coalesces the user's values with the chart's."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None and drop_null:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value, drop_null)
        else:
            out[key] = copy.deepcopy(value)
    return out


class CollectValues(argparse.Action):
    """Keeps --values/--set/--set-string/--set-json in command-line order."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = getattr(namespace, "value_sources", None) or []
        items.append((option_string, value))
        namespace.value_sources = items


def add_value_options(p: argparse.ArgumentParser) -> None:
    p.set_defaults(value_sources=[])
    for flag, meta, help_text in [
        ("--values", "FILE", "a YAML file of values (repeatable)"),
        ("--set", "K=V", "a value, typed like helm: true/false/null/integers (repeatable)"),
        ("--set-string", "K=V", "a string value (repeatable)"),
        ("--set-json", "K=JSON", "a JSON value (repeatable)"),
    ]:
        p.add_argument(flag, metavar=meta, action=CollectValues, help=help_text)


def user_values(sources: list[tuple[str, str]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option, text in sources:
        if option == "--values":
            loaded = yaml.safe_load(Path(text).read_text()) or {}
            if not isinstance(loaded, dict):
                raise Usage(f"{text}: values must be a mapping")
            values = overlay(values, loaded)
            continue
        if "=" not in text:
            raise Usage(f"{option} {text!r}: expected KEY=VALUE")
        key, raw = text.split("=", 1)
        if option == "--set":
            value = typed(raw)
        elif option == "--set-string":
            value = raw
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise Usage(f"--set-json {key}: {e}") from e
        override: dict[str, Any] = {}
        set_path(override, key, value)
        values = overlay(values, override)
    return values


# ---------------------------------------------------------------------------------------------
# Commands.


class StderrCapture:
    """Captures what the Go library writes to file descriptor 2 (its log), and echoes it."""

    def __enter__(self) -> "StderrCapture":
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        sys.stderr.write(self.text)


def config(namespace: str, kubeconfig: str | None) -> "helm.Configuration":
    if kubeconfig and not Path(kubeconfig).is_file():
        raise Usage(f"kubeconfig {kubeconfig} not found")
    return helm.Configuration(namespace=namespace, kubeconfig=kubeconfig)


def describe(release: dict[str, Any]) -> str:
    info = release.get("info", {})
    return (
        f"release {release.get('name')} in namespace {release.get('namespace')}: "
        f"revision {release.get('version')}, {info.get('status')} ({info.get('description')})"
    )


def cmd_lint(args: argparse.Namespace) -> int:
    chart = Path(args.chart).resolve()
    if not (chart / "Chart.yaml").is_file():
        raise Usage(f"{chart} is not a chart directory")
    overrides = user_values(args.value_sources)
    with tempfile.TemporaryDirectory(prefix="helm-lint-") as tmp:
        target = chart
        merged = None
        if overrides:
            # Lint takes no values: lint a copy whose values.yaml already has them.
            target = Path(tmp) / chart.name
            shutil.copytree(chart, target)
            defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
            merged = overlay(defaults, overrides, drop_null=True)
            (target / "values.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
        with StderrCapture() as log:
            result = asyncio.run(helm.Lint(config("default", None)).run(str(target)))
    messages = result.get("Messages") or []
    worst = 0
    for m in messages:
        sev = int(m.get("Severity", 0))
        worst = max(worst, sev)
        print(f"[{SEVERITY.get(sev, sev)}] {m.get('Path')}")
    # In lint mode Helm's `fail` only logs its message (and `required` passes): count it as an error.
    for line in log.text.splitlines():
        match = FAIL_LOG.search(line)
        if match:
            worst = 3
            print(f"[ERROR] templates/: fail: {match.group(1)}")
    if worst >= 3:
        explain_schema(chart, merged)
    failed = worst >= 3 or (args.strict and worst >= 2) or bool(result.get("Errors"))
    verdict = "failed" if failed else "passed"
    print(f"lint {verdict}: {result.get('TotalChartsLinted')} chart(s), {len(messages)} message(s)")
    if failed:
        print(
            f"helm.py: lint of {chart} failed (helm-sdkpy drops the message texts; "
            "`install` or `template` against a cluster shows them)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def explain_schema(chart: Path, merged: dict[str, Any] | None) -> None:
    """Prints what the chart's schema rejects, when the jsonschema module is at hand."""
    schema_file = chart / "values.schema.json"
    if not schema_file.is_file():
        return
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return
    values = merged if merged is not None else (yaml.safe_load((chart / "values.yaml").read_text()) or {})
    validator = jsonschema.Draft7Validator(json.loads(schema_file.read_text()))
    for err in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        print(f"  values.yaml: at {where}: {err.message}")


def cmd_install(args: argparse.Namespace) -> int:
    values = user_values(args.value_sources)
    cfg = config(args.namespace, args.kubeconfig)
    release = asyncio.run(
        helm.Install(cfg).run(
            args.release,
            str(Path(args.chart).resolve()),
            values=values or None,
            create_namespace=args.create_namespace,
            wait=False,
            timeout=args.timeout,
        )
    )
    print(describe(release))
    if args.show_manifest:
        print(release.get("manifest", ""))
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    values = user_values(args.value_sources)
    cfg = config(args.namespace, args.kubeconfig)
    release = asyncio.run(
        helm.Upgrade(cfg).run(
            args.release,
            str(Path(args.chart).resolve()),
            values=values or None,
            wait=False,
            timeout=args.timeout,
            reuse_values=args.reuse_values,
        )
    )
    print(describe(release))
    if args.show_manifest:
        print(release.get("manifest", ""))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    cfg = config(args.namespace, args.kubeconfig)
    result = asyncio.run(helm.Uninstall(cfg).run(args.release, wait=args.wait, timeout=args.timeout))
    release = result.get("release") or {}
    print(describe(release) if release else f"release {args.release} uninstalled")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = config(args.namespace, args.kubeconfig)
    release = asyncio.run(helm.Status(cfg).run(args.release))
    print(describe(release))
    for kind, objects in sorted((release.get("info", {}).get("resources") or {}).items()):
        if "(related)" in kind:
            continue
        for obj in objects or []:
            meta = obj.get("metadata", {})
            where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
            print(f"  {kind} {where}{meta.get('name')}")
    return 0


def cmd_template(args: argparse.Namespace) -> int:
    values = user_values(args.value_sources)
    cfg = config(args.namespace, args.kubeconfig)
    try:
        release = asyncio.run(
            helm.Install(cfg).run(
                args.release, str(Path(args.chart).resolve()), values=values or None, wait=False, timeout=args.timeout
            )
        )
        print(release.get("manifest", ""))
        # Hooks too, as `helm template` prints them: they are not part of the manifest.
        for hook in release.get("hooks") or []:
            print(f"---\n# Source: {hook.get('path')}\n{hook.get('manifest', '').strip()}")
    finally:
        # Also after a failed install, which may leave a failed release behind.
        try:
            asyncio.run(helm.Uninstall(cfg).run(args.release, wait=False, timeout=args.timeout))
        except helm.ReleaseNotFoundError:
            pass
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    lint = sub.add_parser("lint", help="lint a chart (with values: a copy of it)")
    lint.add_argument("chart")
    lint.add_argument("--strict", action="store_true", help="fail on warnings too")
    add_value_options(lint)
    lint.set_defaults(run=cmd_lint)

    def cluster(q: argparse.ArgumentParser) -> None:
        q.add_argument("--kubeconfig", required=True)
        q.add_argument("--timeout", type=int, default=120, help="seconds (default 120)")

    for name, run, help_text in [
        ("install", cmd_install, "install a release (no waiting: it returns once the objects exist)"),
        ("upgrade", cmd_upgrade, "upgrade a release"),
        ("template", cmd_template, "print the manifest of a throwaway install (needs a cluster)"),
    ]:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("release")
        q.add_argument("chart")
        q.add_argument("namespace")
        cluster(q)
        add_value_options(q)
        if name == "install":
            q.add_argument("--create-namespace", action="store_true")
        if name == "upgrade":
            q.add_argument("--reuse-values", action="store_true", help="merge VALUES over the release's values")
        if name != "template":
            q.add_argument("--show-manifest", action="store_true", help="print the rendered manifest")
        q.set_defaults(run=run)

    for name, run, help_text in [
        ("uninstall", cmd_uninstall, "uninstall a release"),
        ("status", cmd_status, "show a release and its objects"),
    ]:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("release")
        q.add_argument("namespace")
        cluster(q)
        if name == "uninstall":
            q.add_argument("--wait", action="store_true", help="wait until the objects are gone")
        q.set_defaults(run=run)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Usage as e:
        print(f"helm.py: {e}", file=sys.stderr)
        return 2
    except helm.HelmError as e:
        print(f"helm.py {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
