"""`python -m qdbpool probe`: roles, JSON, failures, secrets, usage and --watch, end to end
against real local PostgreSQL and MariaDB servers (never the system's own servers)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from qdbpool.cli import main
from qdbpool.cli.checks import Prober
from qdbpool.cli.drivers import make_driver
from qdbpool.cli.table import render_table
from qdbpool.cluster import Role
from qdbpool.dsn import Redactor, parse_dsn
from qdbpool.testing.mariadb import MariaDBServer
from qdbpool.testing.postgres import PostgresCluster

COLUMNS = ["HOST", "ROLE", "RESPONSE", "LAG", "ERROR"]
JSON_KEYS = {"dsn", "hosts", "primary"}
HOST_KEYS = {"host", "port", "role", "response_ms", "lag_s", "error"}

Run = Callable[..., subprocess.CompletedProcess[str]]


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the table, as {column: cell}; cells are cut at the header's offsets."""
    lines = text.splitlines()
    header = lines[0]
    assert header.split() == COLUMNS, header
    starts = [header.index(name) for name in COLUMNS]
    rows = []
    for line in lines[1:]:
        cells = [
            line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, start in enumerate(starts)
        ]
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def by_port(rows: list[dict[str, str]]) -> dict[int, dict[str, str]]:
    return {int(row["HOST"].rpartition(":")[2]): row for row in rows}


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


# -- the table and the JSON --------------------------------------------------------------------


def test_table_shows_the_primary_and_both_replicas(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, run_cli: Run
) -> None:
    done = run_cli("probe", pg_url(hosts_of(pg)))

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a terminal: no progress line
    rows = by_port(parse_table(done.stdout))
    assert set(rows) == {node.port for node in pg.nodes}
    primary = rows[pg.primary.port]
    assert primary["HOST"] == f"127.0.0.1:{pg.primary.port}"
    assert primary["ROLE"] == "primary"
    assert primary["RESPONSE"].endswith(" ms")
    assert float(primary["RESPONSE"].split()[0]) >= 0
    assert primary["LAG"] == ""
    assert primary["ERROR"] == ""
    for node in pg.standbys:
        row = rows[node.port]
        assert row["ROLE"] == "replica"
        assert row["RESPONSE"].endswith(" ms")
        assert row["LAG"].endswith(" s") and float(row["LAG"].split()[0]) >= 0
        assert row["ERROR"] == ""


def test_json_gives_one_object_with_every_host(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, run_cli: Run
) -> None:
    done = run_cli("probe", pg_url(hosts_of(pg)), "--json")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report) == JSON_KEYS
    assert report["primary"] == f"127.0.0.1:{pg.primary.port}"
    ports = [node.port for node in pg.nodes]
    assert report["dsn"] == (
        f"postgresql://app:***@{','.join(f'127.0.0.1:{p}' for p in ports)}/postgres"
    )
    assert [h["port"] for h in report["hosts"]] == ports  # the DSN's order
    standby_ports = {node.port for node in pg.standbys}
    for host in report["hosts"]:
        assert set(host) == HOST_KEYS
        assert host["host"] == "127.0.0.1"
        assert isinstance(host["port"], int)
        assert isinstance(host["response_ms"], float) and host["response_ms"] >= 0
        assert host["error"] is None
        if host["port"] in standby_ports:
            assert host["role"] == "replica"
            assert isinstance(host["lag_s"], float) and host["lag_s"] >= 0
        else:
            assert host["role"] == "primary"
            assert host["lag_s"] is None


def test_a_libpq_key_value_dsn_works_too(
    pg: PostgresCluster, password: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = ",".join(node.host for node in pg.nodes)
    ports = ",".join(str(node.port) for node in pg.nodes)
    dsn = f"host={hosts} port={ports} user=app password='{password}' dbname=postgres"

    assert main(["probe", dsn, "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    roles = {h["port"]: h["role"] for h in report["hosts"]}
    assert roles == {node.port: "primary" if node is pg.primary else "replica" for node in pg.nodes}
    assert report["dsn"].startswith("postgresql://app:***@")


# -- hosts that are down -----------------------------------------------------------------------


def test_a_killed_primary_is_down_and_the_exit_status_is_1(
    own_pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, run_cli: Run
) -> None:
    url = pg_url(hosts_of(own_pg))
    own_pg.primary.kill()

    done = run_cli("probe", url, "--json")

    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["primary"] is None
    hosts = {h["port"]: h for h in report["hosts"]}
    dead = hosts[own_pg.primary.port]
    assert dead["role"] == "down"
    assert dead["response_ms"] is None and dead["lag_s"] is None
    assert dead["error"] and "\n" not in dead["error"]
    assert hosts[own_pg.standbys[0].port]["role"] == "replica"


def test_a_stopped_primary_shows_down_in_the_table(
    own_pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, run_cli: Run
) -> None:
    url = pg_url(hosts_of(own_pg))
    own_pg.primary.stop()

    done = run_cli("probe", url)

    assert done.returncode == 1
    rows = by_port(parse_table(done.stdout))
    assert rows[own_pg.primary.port]["ROLE"] == "down"
    assert "refused" in rows[own_pg.primary.port]["ERROR"].lower()
    assert rows[own_pg.standbys[0].port]["ROLE"] == "replica"


def test_a_refusing_host_is_down_while_the_rest_answer(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, run_cli: Run
) -> None:
    replica = pg.standbys[0]
    refusing = proxy(replica.host, replica.port)
    refusing.refuse()
    hosts = [(pg.primary.host, pg.primary.port), (refusing.host, refusing.port)]

    done = run_cli("probe", pg_url(hosts), "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    roles = {h["port"]: (h["role"], h["error"]) for h in report["hosts"]}
    assert roles[pg.primary.port] == ("primary", None)
    role, error = roles[refusing.port]
    assert role == "down"
    assert "refused" in error.lower()


def test_no_primary_when_the_only_primary_refuses(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, run_cli: Run
) -> None:
    refusing = proxy(pg.primary.host, pg.primary.port)
    refusing.refuse()
    replica = pg.standbys[0]

    done = run_cli("probe", pg_url([(refusing.host, refusing.port), (replica.host, replica.port)]))

    assert done.returncode == 1
    rows = by_port(parse_table(done.stdout))
    assert rows[refusing.port]["ROLE"] == "down"
    assert rows[replica.port]["ROLE"] == "replica"


def test_a_stalled_host_is_down_within_the_timeout(
    pg: PostgresCluster,
    pg_url: Callable[..., str],
    proxy: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stalled = proxy(pg.primary.host, pg.primary.port)
    stalled.stall()
    replica = pg.standbys[0]
    url = pg_url([(stalled.host, stalled.port), (replica.host, replica.port)])

    started = time.monotonic()
    status = main(["probe", url, "--json", "--timeout", "0.5"])
    elapsed = time.monotonic() - started

    # libpq's connect timeout is 2 s at least: well under it means the deadline did it.
    assert elapsed < 1.5, f"took {elapsed:.2f}s"
    assert status == 1
    hosts = {h["port"]: h for h in json.loads(capsys.readouterr().out)["hosts"]}
    assert hosts[stalled.port]["role"] == "down"
    assert hosts[stalled.port]["error"] == "no answer within 0.5s"
    assert hosts[replica.port]["role"] == "replica"


def test_a_stalled_host_does_not_hang_the_command(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, run_cli: Run
) -> None:
    stalled = proxy(pg.standbys[1].host, pg.standbys[1].port)
    stalled.stall()
    url = pg_url([(pg.primary.host, pg.primary.port), (stalled.host, stalled.port)])

    done = run_cli("probe", url, "--timeout", "1", timeout=20)

    assert done.returncode == 0
    rows = by_port(parse_table(done.stdout))
    assert rows[stalled.port]["ROLE"] == "down"
    assert rows[stalled.port]["ERROR"] == "no answer within 1s"
    assert_no_traceback(done.stderr)


def test_a_wrong_password_leaves_the_role_unknown(
    pg: PostgresCluster, pg_url: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = pg_url([(pg.primary.host, pg.primary.port)], password="not-the-password")

    assert main(["probe", url, "--json"]) == 1

    (host,) = json.loads(capsys.readouterr().out)["hosts"]
    assert host["role"] == "unknown"
    assert "password authentication failed" in host["error"]


def probe_threads(address: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"qdbpool-probe[{address}]"]


def test_a_host_that_stalls_after_connecting_is_cut_off_and_its_probe_closed(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, poll: Any
) -> None:
    front = proxy(pg.primary.host, pg.primary.port)
    parsed = parse_dsn(pg_url([(front.host, front.port)]))
    driver = make_driver(parsed, 0.5)
    real_open = driver.open_probe
    opened: list[Any] = []

    def open_then_stall(address: Any, timeout: float) -> Any:
        conn = real_open(address, timeout)
        opened.append(conn)
        front.stall()  # the host stops answering between the connect and the role query
        return conn

    driver.open_probe = open_then_stall  # type: ignore[method-assign]
    prober = Prober(driver, parsed.hosts, 0.5)
    try:
        (result,) = prober.round()

        assert result.role is Role.DOWN
        assert result.error == "no answer within 0.5s"
        # Its socket was shut down, so the check's thread (blocked reading) ends by itself,
        # and closes the connection it owns.
        poll(lambda: not probe_threads(str(parsed.hosts[0])), timeout=5, what="check ended")
        assert len(opened) == 1 and opened[0].closed
    finally:
        prober.close()


def test_a_host_stuck_connecting_gets_no_second_check_meanwhile(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, poll: Any
) -> None:
    stalled = proxy(pg.primary.host, pg.primary.port)
    stalled.stall()
    parsed = parse_dsn(pg_url([(stalled.host, stalled.port)]))
    prober = Prober(make_driver(parsed, 0.3), parsed.hosts, 0.3)
    try:
        (first,) = prober.round()
        poll(lambda: stalled.accepted >= 1, what="the first connect")
        (second,) = prober.round()  # within libpq's 2 s connect timeout: still connecting

        assert first.error == "no answer within 0.3s"
        assert second.role is Role.DOWN
        assert second.error == "no answer within 0.3s (an earlier check is still out)"
        assert stalled.accepted == 1
        assert len(probe_threads(str(parsed.hosts[0]))) == 1
    finally:
        prober.close()


# -- the password never shows ------------------------------------------------------------------


def test_the_password_never_appears_in_any_output(
    pg: PostgresCluster,
    pg_url: Callable[..., str],
    hosts_of: Any,
    proxy: Any,
    password: str,
    secret_forms: list[str],
    run_cli: Run,
) -> None:
    stalled = proxy(pg.primary.host, pg.primary.port)
    stalled.stall()
    refusing = proxy(pg.standbys[0].host, pg.standbys[0].port)
    refusing.refuse()
    broken = [(stalled.host, stalled.port), (refusing.host, refusing.port)]
    wrong = password.replace("7", "8")  # a wrong password: the server's refusal is shown
    good, bad = pg_url(hosts_of(pg)), pg_url(broken)
    runs: list[tuple[list[str], int, str]] = [  # (arguments, exit status, text it shows)
        (["probe", good], 0, "primary"),
        (["probe", good, "--json"], 0, '"primary"'),
        (["probe", bad, "--timeout", "0.5"], 1, "refused"),
        (["probe", bad, "--timeout", "0.5", "--json"], 1, "no answer within 0.5s"),
        (["probe", pg_url(hosts_of(pg), password=wrong)], 1, "password authentication failed"),
        (["probe", pg_url([("127.0.0.1", 99999)])], 2, "out of range"),
        (["probe", f"postgresql://app:{password}@127.0.0.1/postgres"], 2, "percent-encode"),
        (["probe", good + "?nosuchoption=1"], 2, "nosuchoption"),
        (["probe", f"host=127.0.0.1 user=app password='{password}' bogus"], 2, "missing '='"),
    ]
    for args, status, text in runs:
        done = run_cli(*args)
        shown = done.stdout + done.stderr
        assert (done.returncode, text in shown) == (status, True), (args, shown)
        for form in secret_forms:
            assert form not in shown, (form, args)


def test_the_scrubber_blanks_every_form_of_a_secret() -> None:
    scrub = Redactor(["p w/@:%"])

    shown = scrub("a p w/@:% b p%20w%2F%40%3A%25 c p+w%2F%40%3A%25 d p%20w/%40%3A%25")

    assert shown == "a *** b *** c *** d ***"


# -- bad usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "named"),
    [
        ("just words", "neither a URL"),
        ("redis://127.0.0.1/0", "redis"),
        ("postgresql://u@127.0.0.1:99999/db", "99999"),
        # Without '@', '127.0.0.1:99999' may be 'user:password': the number is not shown.
        ("postgresql://127.0.0.1:99999/db", "port of host '127.0.0.1' is out of range"),
        ("postgresql://127.0.0.1:5x/db", "port of host '127.0.0.1' is not a number"),
        ("postgresql://127.0.0.1/db?nosuchoption=1", "nosuchoption"),
        ("mysql://127.0.0.1/db?nosuchoption=1", "nosuchoption"),
        ("mysql://127.0.0.1/db?connect_timeout=soon", "connect_timeout"),
        ("", "empty DSN"),
    ],
)
def test_an_invalid_dsn_exits_2_with_one_clear_line(
    dsn: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", dsn]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("qdbpool probe: invalid DSN: ")
    assert err.endswith("\n") and err.count("\n") == 1
    assert named in err


@pytest.mark.parametrize(
    "args",
    [
        ["probe"],  # no DSN
        ["probe", "postgresql://h/db", "--timeout", "0"],
        ["probe", "postgresql://h/db", "--timeout", "soon"],
        ["probe", "postgresql://h/db", "--watch", "-1"],
        ["probe", "postgresql://h/db", "--nosuchflag"],
        ["nosuchcommand"],
    ],
)
def test_bad_usage_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)

    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_an_invalid_dsn_in_a_real_process_gives_no_traceback(run_cli: Run) -> None:
    done = run_cli("probe", "postgresql://127.0.0.1:0/db")

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("qdbpool probe: invalid DSN: port of host '127.0.0.1'")
    assert len(done.stderr.splitlines()) == 1


def test_help_is_useful(run_cli: Run) -> None:
    top = run_cli("--help")
    probe = run_cli("probe", "--help")

    assert top.returncode == probe.returncode == 0
    assert "probe" in top.stdout
    for word in ("--watch", "--json", "--timeout", "DSN", "exit status", "response_ms"):
        assert word in probe.stdout


# -- --watch and Ctrl-C ------------------------------------------------------------------------


def test_watch_prints_rounds_until_ctrl_c(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, spawn_cli: Any
) -> None:
    cli = spawn_cli("probe", pg_url(hosts_of(pg)), "--watch", "0.2", "--json")

    lines = cli.wait_for(lambda seen: len(seen) >= 2)
    status = cli.interrupt()

    assert status == 0
    assert_no_traceback(cli.stderr)
    assert cli.stderr == ""
    rounds = [json.loads(line) for line in cli.lines]  # each line a whole round, also the last
    assert len(rounds) >= len(lines) >= 2
    assert all(r["primary"] == f"127.0.0.1:{pg.primary.port}" for r in rounds)


def test_the_first_round_reaches_a_pipe_at_once(
    pg: PostgresCluster, pg_url: Callable[..., str], hosts_of: Any, spawn_cli: Any
) -> None:
    # The next round is 60 s away: the first must arrive without waiting for more output
    # to fill the pipe's buffer, or for the process to exit. Into a pipe, --watch says
    # where each host stands, then which one is the primary (and later only what changes).
    cli = spawn_cli("probe", pg_url(hosts_of(pg)), "--watch", "60")

    lines = cli.wait_for(lambda seen: len(seen) >= len(pg.nodes) + 1, timeout=15)
    status = cli.interrupt()

    assert status == 0
    said = [line.split("  ", 1)[1].rstrip("\n") for line in lines]  # after the timestamp
    assert said == [
        *(f"127.0.0.1:{n.port}  {'primary' if n is pg.primary else 'replica'}" for n in pg.nodes),
        f"primary is 127.0.0.1:{pg.primary.port}",
    ]
    assert_no_traceback(cli.stderr)


def test_watch_exits_with_the_status_of_the_last_round(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, spawn_cli: Any
) -> None:
    front = proxy(pg.primary.host, pg.primary.port)
    replica = pg.standbys[0]
    url = pg_url([(front.host, front.port), (replica.host, replica.port)])
    cli = spawn_cli("probe", url, "--watch", "0.2", "--json", "--timeout", "1")

    cli.wait_for(lambda seen: len(seen) >= 1)
    assert json.loads(cli.lines[0])["primary"] == f"{front.host}:{front.port}"
    front.refuse()
    cli.wait_for(lambda seen: json.loads(seen[-1])["primary"] is None)
    status = cli.interrupt()

    assert status == 1
    assert_no_traceback(cli.stderr)


def test_ctrl_c_during_a_single_probe_exits_130(
    pg: PostgresCluster, pg_url: Callable[..., str], proxy: Any, poll: Any, spawn_cli: Any
) -> None:
    stalled = proxy(pg.primary.host, pg.primary.port)
    stalled.stall()
    cli = spawn_cli("probe", pg_url([(stalled.host, stalled.port)]), "--timeout", "60")

    poll(lambda: stalled.accepted >= 1, timeout=20, what="the probe connecting")
    status = cli.interrupt()

    assert status == 130
    assert cli.lines == []
    assert_no_traceback(cli.stderr)


# -- progress on a terminal --------------------------------------------------------------------


def test_progress_shows_on_a_terminal_and_is_erased(
    pg: PostgresCluster,
    pg_url: Callable[..., str],
    hosts_of: Any,
    spawn_cli: Any,
    pty_pair: tuple[int, int],
) -> None:
    master, slave = pty_pair
    cli = spawn_cli("probe", pg_url(hosts_of(pg)), stderr=slave)
    os.close(slave)  # the child holds its own copy: reading ends when it exits
    shown = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert cli.proc.wait(10) == 0

    text = shown.decode()
    assert "probing 3 hosts..." in text
    assert "3/3 done" in text
    assert text.endswith("\r\x1b[K")  # the last thing written erases the line
    stdout = "".join(cli.lines)
    assert "probing" not in stdout
    assert len(parse_table(stdout)) == 3


# -- MySQL / MariaDB ---------------------------------------------------------------------------


def test_a_mariadb_server_is_a_primary(
    mariadb: MariaDBServer,
    mysql_url: Callable[..., str],
    secret_forms: list[str],
    run_cli: Run,
) -> None:
    done = run_cli("probe", mysql_url([(mariadb.host, mariadb.port)]), "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["primary"] == f"127.0.0.1:{mariadb.port}"
    assert report["dsn"] == f"mysql://app:***@127.0.0.1:{mariadb.port}/appdb"
    (host,) = report["hosts"]
    assert host["role"] == "primary"
    assert isinstance(host["response_ms"], float)
    assert host["error"] is None
    for form in secret_forms:
        assert form not in done.stdout + done.stderr


def test_a_read_only_mariadb_is_a_replica_and_a_dead_host_is_down(
    mariadb: MariaDBServer,
    mysql_url: Callable[..., str],
    proxy: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refusing = proxy(mariadb.host, mariadb.port)
    refusing.refuse()
    url = mysql_url([(mariadb.host, mariadb.port), (refusing.host, refusing.port)])
    mariadb.sql("SET GLOBAL read_only = ON")
    try:
        status = main(["probe", url])
    finally:
        mariadb.sql("SET GLOBAL read_only = OFF")

    assert status == 1
    out, err = capsys.readouterr()
    rows = by_port(parse_table(out))
    assert rows[mariadb.port]["ROLE"] == "replica"
    assert rows[mariadb.port]["LAG"] == ""  # not replicating (and no privilege to ask)
    assert rows[refusing.port]["ROLE"] == "down"
    assert rows[refusing.port]["ERROR"]
    assert err == ""  # no library warning about the replication status leaks out


# -- the table renderer ------------------------------------------------------------------------


def test_the_table_aligns_columns_and_strips_trailing_blanks() -> None:
    text = render_table(["A", "BB", "C"], [["xxx", "", ""], ["y", "z", "w"]])

    assert text.splitlines() == ["A    BB  C", "xxx", "y    z   w"]
    with pytest.raises(ValueError):
        render_table(["A"], [["1", "2"]])
