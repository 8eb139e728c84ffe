"""`probe --watch` as an operator sees it through a failover: a screen redrawn in place in a
real terminal (tmux), a line per change into a pipe; and `--version` and the `qdbpool`
console script."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qdbpool.cli.checks import HostResult
from qdbpool.cli.watch import describe_changes
from qdbpool.cluster import Role
from qdbpool.dsn import HostPort
from qdbpool.testing.postgres import PostgresCluster

Run = Callable[..., subprocess.CompletedProcess[str]]

REPO = Path(__file__).resolve().parents[2]
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
HEADER = re.compile(r"^HOST +ROLE +RESPONSE +LAG +ERROR$", re.MULTILINE)
HEADER_START = re.compile(r"^HOST +ROLE", re.MULTILINE)  # in a narrow window, the rest is cut


def roles_on(screen: str) -> dict[int, str]:
    """{port: role} from the table rows on a screen (change lines start with a date)."""
    return {
        int(port): role
        for port, role in re.findall(r"^127\.0\.0\.1:(\d+) +(\w+)", screen, re.MULTILINE)
    }


# -- on a terminal -----------------------------------------------------------------------------


def test_a_failover_on_the_terminal_redraws_one_screen(
    own_pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, tmux: Any
) -> None:
    old, new = own_pg.primary, own_pg.standbys[0]
    url = pg_url(hosts_of(own_pg))
    window = tmux(["probe", url, "--watch", "0.2", "--timeout", "1"], width=120, height=30)

    before = window.wait_for(
        lambda s: roles_on(s) == {old.port: "primary", new.port: "replica"}, "the cluster"
    )
    assert window.pane("alternate_on") == "1"  # a screen of its own: the shell's is kept
    assert window.pane("cursor_flag") == "0"  # no cursor blinking over the table
    own_pg.failover(to=new)
    after = window.wait_for(
        lambda s: (
            roles_on(s) == {old.port: "down", new.port: "primary"}
            and re.search(rf"^{STAMP}  primary is 127\.0\.0\.1:{new.port}", s, re.M) is not None
        ),
        "the failover",
    )

    # One screen, redrawn: the title on the top line, the table's header once, and nothing
    # scrolled off into the history although many rounds went by.
    title = re.compile(
        rf"{STAMP}   every 0\.2s, Ctrl-C to stop   "
        rf"qdbpool probe postgresql://app:\*\*\*@127\.0\.0\.1:{old.port},"
    )
    for screen in (before, after):
        assert title.match(screen.splitlines()[0]), screen
        assert len(HEADER.findall(screen)) == 1, screen
    assert len(HEADER.findall(window.everything())) == 1
    changes = after[after.index("changes:") :]
    assert re.search(rf"^{STAMP}  127\.0\.0\.1:{old.port}  primary -> down: ", changes, re.M)
    assert re.search(rf"^{STAMP}  127\.0\.0\.1:{new.port}  replica -> primary$", changes, re.M)
    assert "SENTINEL" not in window.everything()  # the password's marker

    window.send_keys("C-c")
    status = window.exit_status()

    assert status == 0  # the last round had a primary
    # The terminal is as it was (the normal screen, a cursor), with the last table on it.
    assert window.pane("alternate_on") == "0"
    assert window.pane("cursor_flag") == "1"
    final = window.everything()
    assert "Traceback" not in final
    assert len(HEADER.findall(final)) == 1, final
    assert roles_on(final) == {old.port: "down", new.port: "primary"}


def test_sigterm_restores_the_terminal_too(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, tmux: Any
) -> None:
    window = tmux(["probe", pg_url(hosts_of(pg)), "--watch", "0.2"])
    window.wait_for(lambda s: HEADER.search(s) is not None, "the table")
    assert window.pane("alternate_on") == "1"
    shell = int(window.pane("pane_pid"))  # the `sh -c` running the probe
    (probe,) = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()

    os.kill(int(probe), signal.SIGTERM)

    assert window.exit_status() == 128 + signal.SIGTERM
    assert window.pane("alternate_on") == "0"
    assert window.pane("cursor_flag") == "1"
    assert "Traceback" not in window.everything()


def test_a_small_window_is_filled_but_never_scrolled(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, free_port: int, tmux: Any
) -> None:
    # Four hosts (one refusing, with a long error) need 7 lines and more than 50 columns.
    url = pg_url([*hosts_of(pg), ("127.0.0.1", free_port)])
    window = tmux(["probe", url, "--watch", "0.2"], width=50, height=6)

    screen = window.wait_for(
        lambda s: re.search(r"^127\.0\.0\.1:\d+ +primary", s, re.M) is not None, "the table"
    )
    top = screen.splitlines()[0]
    window.wait_for(lambda s: s.splitlines()[0] != top, "a later second's round")

    lines = window.everything().splitlines()
    assert len(HEADER_START.findall("\n".join(lines))) == 1, lines
    assert len(lines) <= 6 and all(len(line) < 50 for line in lines), lines
    last_row = window.screen().splitlines()[5:]
    assert last_row == [] or last_row[0].startswith("probing 4 hosts... "), last_row  # progress


# -- into a pipe -------------------------------------------------------------------------------


def test_a_failover_into_a_pipe_prints_a_line_per_change(
    own_pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, spawn_cli: Any
) -> None:
    old, new = own_pg.primary, own_pg.standbys[0]
    a, b = f"127.0.0.1:{old.port}", f"127.0.0.1:{new.port}"
    cli = spawn_cli("probe", pg_url(hosts_of(own_pg)), "--watch", "0.2", "--timeout", "1")

    cli.wait_for(lambda seen: len(seen) >= 3)
    own_pg.failover(to=new)  # many rounds long: each would add lines if rounds repeated
    cli.wait_for(lambda seen: f"  primary is {b}" in seen[-1])
    status = cli.interrupt()

    assert status == 0
    assert cli.stderr == ""
    for line in cli.lines:
        assert re.match(rf"{STAMP}  \S", line), line
    said = [line.rstrip("\n").split("  ", 1)[1] for line in cli.lines]
    assert said[:3] == [f"{a}  primary", f"{b}  replica", f"primary is {a}"]
    # Then only changes, each once. Depending on the round that saw it, the failover reads
    # in one step (the old primary down, the new one primary) or two (no primary between).
    changes = said[3:]
    assert changes[0].startswith(f"{a}  primary -> down: "), changes
    assert changes[1:] in (
        [f"{b}  replica -> primary", f"primary is {b} (was {a})"],
        [f"no primary (was {a})", f"{b}  replica -> primary", f"primary is {b}"],
    ), changes


def test_the_changes_a_round_can_bring() -> None:
    def host(port: int, role: Role, error: str | None = None) -> HostResult:
        return HostResult(HostPort("db", port), role, error=error)

    first = [host(1, Role.PRIMARY), host(2, Role.REPLICA), host(3, Role.DOWN, "refused")]
    assert describe_changes(None, first) == [
        "db:1  primary",
        "db:2  replica",
        "db:3  down: refused",
        "primary is db:1",
    ]
    assert describe_changes(first, first) == []  # nothing changed: nothing to say
    slower = [host(1, Role.PRIMARY), host(2, Role.REPLICA), host(3, Role.DOWN, "timed out")]
    assert describe_changes(first, slower) == []  # a new wording of the same trouble
    moved = [host(1, Role.UNKNOWN, "bad password"), host(2, Role.PRIMARY), host(3, Role.REPLICA)]
    assert describe_changes(first, moved) == [
        "db:1  primary -> unknown: bad password",
        "db:2  replica -> primary",
        "db:3  down -> replica",
        "primary is db:2 (was db:1)",
    ]
    none = [host(1, Role.DOWN), host(2, Role.REPLICA), host(3, Role.DOWN, "refused")]
    assert describe_changes(first, none) == ["db:1  primary -> down", "no primary (was db:1)"]
    assert describe_changes(none, first)[-1] == "primary is db:1"


def test_json_with_watch_on_a_terminal_is_still_one_object_per_line(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, tmux: Any
) -> None:
    window = tmux(["probe", pg_url(hosts_of(pg)), "--watch", "0.2", "--json"], width=400)

    def whole(screen: str) -> list[str]:
        return [line for line in screen.splitlines() if line.startswith("{") and line.endswith("}")]

    screen = window.wait_for(lambda s: len(whole(s)) >= 2, "two rounds")

    assert window.pane("alternate_on") == "0"
    assert screen.splitlines()[:2] == whole(screen)[:2]  # nothing else: a line per round
    rounds = [json.loads(line) for line in whole(screen)]
    assert all(r["primary"] == f"127.0.0.1:{pg.primary.port}" for r in rounds)


# -- --version and the console script ----------------------------------------------------------


def test_version_is_the_installed_one(run_cli: Run) -> None:
    done = run_cli("--version")

    assert done.returncode == 0, done.stderr
    declared = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert declared is not None
    assert done.stdout == f"qdbpool {declared.group(1)}\n"
    assert importlib.metadata.version("qdbpool") == declared.group(1)


def test_the_qdbpool_command_is_installed(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any
) -> None:
    # Installed by `make install` (pip install -e) next to the interpreter running the tests.
    script = Path(sys.executable).parent / "qdbpool"
    assert script.is_file(), f"no console script at {script}: run `make install`"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=60, check=False
        )

    version = run("--version")
    usage = run("probe", "--help")
    probed = run("probe", pg_url(hosts_of(pg)), "--json")

    assert version.returncode == usage.returncode == probed.returncode == 0
    assert version.stdout == f"qdbpool {importlib.metadata.version('qdbpool')}\n"
    assert usage.stdout.startswith("usage: qdbpool probe ")
    assert json.loads(probed.stdout)["primary"] == f"127.0.0.1:{pg.primary.port}"
