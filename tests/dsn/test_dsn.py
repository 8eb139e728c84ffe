"""qdbpool.dsn: multi-host DSN parsing (URL and libpq key/value forms) and redaction."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from qdbpool.dsn import (
    DEFAULT_PORTS,
    REDACTED,
    HostPort,
    ParsedDSN,
    parse_dsn,
    redact_dsn,
)
from qdbpool.errors import ConfigurationError, QdbPoolError


def hosts_of(dsn: str, **kwargs: int) -> list[str]:
    return [str(hp) for hp in parse_dsn(dsn, **kwargs).hosts]


# --------------------------------------------------------------------------- hasql's host rules


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://db1,db2,db3/", ["db1:5432", "db2:5432", "db3:5432"]),
        ("postgresql://db1:1234,db2:5678,db3/", ["db1:1234", "db2:5678", "db3:5432"]),
        ("postgresql://db1,db2,db3:6432/", ["db1:6432", "db2:6432", "db3:6432"]),
    ],
)
def test_hasql_readme_examples_split_as_documented(dsn: str, expected: list[str]) -> None:
    assert hosts_of(dsn) == expected


def test_a_port_on_the_last_host_alone_applies_to_every_host() -> None:
    assert hosts_of("postgresql://a,b:7") == ["a:7", "b:7"]


def test_ports_on_the_first_and_last_hosts_are_per_host_with_default_between() -> None:
    assert hosts_of("postgresql://a:1,b,c:3/") == ["a:1", "b:5432", "c:3"]


def test_a_single_port_on_a_middle_host_is_for_that_host_only() -> None:
    assert hosts_of("postgresql://a,b:2,c/") == ["a:5432", "b:2", "c:5432"]


def test_a_single_host_keeps_its_own_port() -> None:
    assert hosts_of("postgresql://a:6000/db") == ["a:6000"]


def test_repeated_hosts_are_dropped_keeping_the_first() -> None:
    assert hosts_of("postgresql://a,b,a:5432,c/") == ["a:5432", "b:5432", "c:5432"]


def test_same_host_on_different_ports_is_kept_twice() -> None:
    assert hosts_of("postgresql://a:1,a:2/") == ["a:1", "a:2"]


plain_host = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@given(
    st.lists(
        st.tuples(plain_host, st.none() | st.integers(1, 65535)),
        min_size=1,
        max_size=5,
    )
)
def test_host_list_matches_hasql_split_dsn(entries: list[tuple[str, int | None]]) -> None:
    hasql_utils = pytest.importorskip("hasql.utils")
    netloc = ",".join(h if p is None else f"{h}:{p}" for h, p in entries)
    url = f"postgresql://u:pw@{netloc}/db"
    theirs = [d.netloc for d in hasql_utils.split_dsn(url)]
    assert hosts_of(url) == theirs


@given(
    st.lists(plain_host, min_size=1, max_size=4, unique=True),
    st.lists(st.integers(1, 65535), min_size=1, max_size=4),
)
def test_keyword_host_and_port_lists_match_hasql(hosts: list[str], ports: list[int]) -> None:
    hasql_utils = pytest.importorskip("hasql.utils")
    assume(len(ports) in (1, len(hosts)))
    conninfo = f"host={','.join(hosts)} port={','.join(map(str, ports))} dbname=x"
    theirs = [d.netloc for d in hasql_utils.split_dsn(conninfo)]
    assert hosts_of(conninfo) == theirs


# --------------------------------------------------------------------------- schemes, defaults


@pytest.mark.parametrize(
    ("scheme", "port", "family"),
    [
        ("postgresql", 5432, "postgresql"),
        ("postgres", 5432, "postgresql"),
        ("mysql", 3306, "mysql"),
        ("mariadb", 3306, "mysql"),
    ],
)
def test_each_scheme_has_its_default_port(scheme: str, port: int, family: str) -> None:
    dsn = parse_dsn(f"{scheme}://h1,h2/db")
    assert dsn.scheme == scheme
    assert dsn.family == family
    assert dsn.default_port == port == DEFAULT_PORTS[dsn.family]
    assert [hp.port for hp in dsn.hosts] == [port, port]


def test_scheme_is_case_insensitive_and_stored_lower_case() -> None:
    assert parse_dsn("PostgreSQL://h/").scheme == "postgresql"


def test_default_port_argument_overrides_the_scheme_default() -> None:
    assert hosts_of("mysql://a,b:7,c", default_port=3307) == ["a:3307", "b:7", "c:3307"]


def test_invalid_default_port_argument_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="default_port"):
        parse_dsn("postgresql://h", default_port=0)


def test_url_without_host_means_localhost() -> None:
    assert hosts_of("postgresql:///db") == ["localhost:5432"]
    assert hosts_of("postgresql://:6000/db") == ["localhost:6000"]


def test_leading_and_trailing_whitespace_is_ignored() -> None:
    assert hosts_of("  postgresql://h/db\n") == ["h:5432"]


def test_whitespace_around_url_host_entries_is_ignored() -> None:
    assert hosts_of("postgresql://db1, db2:6432/") == ["db1:6432", "db2:6432"]


# --------------------------------------------------------------------------- URL parts


def test_user_password_and_database_are_percent_decoded() -> None:
    dsn = parse_dsn("postgresql://us%40er:p%40ss%2Fw%3Ard@h/my%20db")
    assert (dsn.user, dsn.password, dsn.database) == ("us@er", "p@ss/w:rd", "my db")


def test_unencoded_at_sign_in_password_ends_at_the_last_at_sign() -> None:
    dsn = parse_dsn("postgresql://user:p@ss@h/db")
    assert (dsn.user, dsn.password, dsn.hosts) == ("user", "p@ss", (HostPort("h", 5432),))


def test_colon_in_password_belongs_to_the_password() -> None:
    assert parse_dsn("postgresql://u:a:b@h").password == "a:b"


def test_user_without_password_has_password_none() -> None:
    dsn = parse_dsn("postgresql://u@h/")
    assert (dsn.user, dsn.password) == ("u", None)


def test_empty_password_is_kept_apart_from_no_password() -> None:
    assert parse_dsn("postgresql://u:@h/").password == ""


def test_password_without_user_leaves_user_none() -> None:
    dsn = parse_dsn("postgresql://:pw@h/")
    assert (dsn.user, dsn.password) == (None, "pw")


@pytest.mark.parametrize("url", ["postgresql://h", "postgresql://h/", "postgresql://h?x=1"])
def test_missing_or_empty_database_is_none(url: str) -> None:
    assert parse_dsn(url).database is None


def test_slash_in_database_path_is_part_of_the_name() -> None:
    assert parse_dsn("postgresql://h/a/b").database == "a/b"


def test_query_parameters_are_kept_in_order_and_decoded() -> None:
    dsn = parse_dsn("postgresql://h/db?sslmode=require&application_name=my%20app&z=1&a=")
    assert list(dsn.params.items()) == [
        ("sslmode", "require"),
        ("application_name", "my app"),
        ("z", "1"),
        ("a", ""),
    ]


def test_plus_in_query_is_a_literal_plus_as_in_libpq() -> None:
    assert parse_dsn("postgresql://h/?options=a+b").params["options"] == "a+b"


def test_empty_query_items_are_ignored() -> None:
    assert dict(parse_dsn("postgresql://h/?&a=1&&b=2&").params) == {"a": "1", "b": "2"}


def test_at_sign_in_query_value_is_percent_encoded() -> None:
    assert parse_dsn("postgresql://h/db?application_name=me%40box").params == {
        "application_name": "me@box"
    }


def test_params_are_read_only() -> None:
    params = parse_dsn("postgresql://h/?a=1").params
    with pytest.raises(TypeError):
        params["b"] = "2"  # type: ignore[index]


def test_structural_query_parameters_are_lifted_into_fields() -> None:
    dsn = parse_dsn("postgresql:///?user=u&password=pw&dbname=app&sslmode=disable")
    assert (dsn.user, dsn.password, dsn.database) == ("u", "pw", "app")
    assert dict(dsn.params) == {"sslmode": "disable"}


def test_host_and_port_query_parameters_give_the_hosts_when_the_url_has_none() -> None:
    assert hosts_of("postgresql:///db?host=a,b&port=1,2") == ["a:1", "b:2"]
    assert hosts_of("postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql") == [
        "/var/run/postgresql:5432"
    ]


def test_database_query_parameter_is_an_alias_of_dbname() -> None:
    assert parse_dsn("mysql://h/?database=app").database == "app"


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("postgresql://u@h/?user=v", "user name"),
        ("postgresql://u:p@h/?password=q", "password"),
        ("postgresql://h/db?dbname=other", "database"),
        ("postgresql://h/?dbname=a&database=b", "dbname"),
        ("postgresql://h/?host=other", "host"),
        ("postgresql://h/?port=1", "port"),
    ],
)
def test_a_field_given_twice_is_rejected(
    url: str, part: str, config_error: Callable[[str], str]
) -> None:
    assert part in config_error(url)


# --------------------------------------------------------------------------- IPv6 and odd hosts


def test_bracketed_ipv6_with_port() -> None:
    (hp,) = parse_dsn("postgresql://[::1]:5433/db").hosts
    assert (hp.host, hp.port, str(hp), hp.is_ipv6) == ("::1", 5433, "[::1]:5433", True)


def test_bracketed_ipv6_without_port_gets_the_default() -> None:
    assert hosts_of("postgresql://[2001:db8::1]:6000,[::1]/") == [
        "[2001:db8::1]:6000",
        "[::1]:5432",
    ]


def test_ipv6_port_on_last_host_applies_to_all() -> None:
    assert hosts_of("postgresql://[::1],[::2]:6432") == ["[::1]:6432", "[::2]:6432"]


def test_ipv6_zone_id_is_percent_decoded() -> None:
    dsn = parse_dsn("postgresql://[fe80::1%25eth0]:5432/")
    assert dsn.hosts[0].host == "fe80::1%eth0"
    assert "[fe80::1%25eth0]:5432" in dsn.to_url()


def test_ipv6_host_kwargs_have_no_brackets() -> None:
    assert parse_dsn("postgresql://[::1]:5433").host_kwargs()["host"] == "::1"


def test_percent_encoded_unix_socket_directory_as_host() -> None:
    dsn = parse_dsn("postgresql://%2Ftmp%2Fpg:5433/db")
    assert dsn.hosts == (HostPort("/tmp/pg", 5433),)
    assert "%2Ftmp%2Fpg:5433" in dsn.to_url()


# --------------------------------------------------------------------------- libpq key/value


def test_keyword_value_basic() -> None:
    dsn = parse_dsn("host=a,b port=1,2 user=u password=secret dbname=x sslmode=require")
    assert dsn.scheme == "postgresql"
    assert [str(hp) for hp in dsn.hosts] == ["a:1", "b:2"]
    assert (dsn.user, dsn.password, dsn.database) == ("u", "secret", "x")
    assert dict(dsn.params) == {"sslmode": "require"}


def test_keyword_value_single_port_applies_to_all_hosts() -> None:
    assert hosts_of("host=a,b,c port=6432") == ["a:6432", "b:6432", "c:6432"]


def test_keyword_value_without_port_uses_the_default() -> None:
    assert hosts_of("host=a,b") == ["a:5432", "b:5432"]


def test_keyword_value_empty_port_entry_means_default() -> None:
    assert hosts_of("host=a,b port=,6000") == ["a:5432", "b:6000"]


def test_keyword_value_without_host_means_localhost() -> None:
    assert hosts_of("dbname=x") == ["localhost:5432"]
    assert hosts_of("port=6000 dbname=x") == ["localhost:6000"]


def test_keyword_value_quoted_value_with_spaces_and_escapes() -> None:
    dsn = parse_dsn(r"host=h password='p w \'q\' \\ x' dbname = 'my db'")
    assert dsn.password == r"p w 'q' \ x"
    assert dsn.database == "my db"


def test_keyword_value_backslash_escapes_in_unquoted_values() -> None:
    assert parse_dsn(r"host=h password=a\ b\\c").password == r"a b\c"


def test_keyword_value_spaces_around_equals_sign() -> None:
    dsn = parse_dsn("host = h   user= u  dbname =x")
    assert (dsn.hosts, dsn.user, dsn.database) == ((HostPort("h", 5432),), "u", "x")


def test_keyword_value_splits_on_ascii_whitespace_only_as_libpq_does() -> None:
    assert parse_dsn("host=h password=a\u00a0b").password == "a\u00a0b"


def test_keyword_value_empty_quoted_value() -> None:
    assert parse_dsn("host=h password=''").password == ""


def test_keyword_value_bare_ipv6_host() -> None:
    assert hosts_of("host=::1,db port=1,2") == ["[::1]:1", "db:2"]


def test_keyword_value_unknown_keys_are_params_in_order() -> None:
    dsn = parse_dsn("connect_timeout=3 host=h application_name=x")
    assert list(dsn.params) == ["connect_timeout", "application_name"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("http://h/db", "unsupported scheme 'http'"),
        ("postgresql://u@db1,db2:abc/", "port 'abc' of host 'db2' is not a number"),
        ("postgresql://u@db1:,db2/", "port '' of host 'db1' is not a number"),
        ("postgresql://u@db1:-1/", "port '-1' of host 'db1' is not a number"),
        ("postgresql://db1:-1/", "port of host 'db1' is not a number (if the DSN starts"),
        ("postgresql://u@db1:70000/", "port 70000 of host 'db1' is out of range 1..65535"),
        ("postgresql://u@db1:0/", "port 0 of host 'db1' is out of range 1..65535"),
        # Without '@', 'db1:70000' may be 'user:password': the number is not shown.
        ("postgresql://db1:70000/", "port of host 'db1' is out of range 1..65535"),
        ("postgresql://db1:99999999999/", "out of range"),
        ("postgresql://db1,,db3/", "empty host in host list (entry 2 of 3)"),
        ("postgresql://db1,/", "empty host in host list (entry 2 of 2)"),
        ("postgresql://[::1:5432/", "unbalanced brackets in host '[::1:5432'"),
        ("postgresql://::1]:5432/", "unbalanced brackets"),
        ("postgresql://[::1]x/", "unexpected 'x' after ']'"),
        ("postgresql://[]/", "empty IPv6 address"),
        ("postgresql://[db1]/", "'db1' in brackets is not an IPv6 address"),
        ("postgresql://::1/", "write IPv6 addresses in brackets"),
        ("postgresql://h/?a=1&a=2", "query parameter 'a' is given twice"),
        ("postgresql://h/?flag", "query parameter 'flag' has no '=value'"),
        ("postgresql://h/?=1", "empty name"),
        ("postgresql://h/db#frag", "fragment"),
        ("postgresql://h/%ff", "database name is not valid percent-encoded UTF-8"),
        ("postgresql://h/db@x", "'@' after the host list"),
        ("", "empty DSN"),
        ("just-a-hostname", "neither a URL"),
        ("host=a,b port=1,2,3", "3 ports given for 2 hosts"),
        ("host=a,,b", "empty host in host list (entry 2 of 3)"),
        ("host=a port=x", "port 'x' of host 'a' is not a number"),
        ("host=a:5432", "host 'a:5432' contains ':' but is not an IPv6 address"),
        ("host=[::1", "unbalanced brackets"),
        ("host=a host=b", "key 'host' is given twice"),
        ("host=a dbname", "missing '=' after 'dbname'"),
        ("host=a =x", "missing key before '='"),
        ("host=a dbname='x", "unterminated quoted value of 'dbname'"),
        ("host=a dbname=x database=y", "both 'dbname' and 'database'"),
        ("host=a,b hostaddr=10.0.0.1,10.0.0.2", "hostaddr with several hosts"),
        ("hostaddr=10.0.0.1,10.0.0.2 port=1,2", "hostaddr with several hosts"),
        ("postgresql://a,b/db?hostaddr=10.0.0.1", "hostaddr with several hosts"),
    ],
)
def test_malformed_dsn_error_names_the_bad_part(
    dsn: str, expected: str, config_error: Callable[[str], str]
) -> None:
    assert expected in config_error(dsn)


def test_configuration_error_is_a_qdbpool_error_and_a_value_error() -> None:
    with pytest.raises(QdbPoolError):
        parse_dsn("http://x")
    with pytest.raises(ValueError):
        parse_dsn("http://x")


def test_non_string_dsn_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_dsn(b"postgresql://h")  # type: ignore[arg-type]


def test_keyword_value_word_after_a_password_is_not_quoted(
    config_error: Callable[[str], str],
) -> None:
    message = config_error("host=h password=top secret dbname=x")
    assert "top" not in message
    assert "secret" not in message
    assert "quote values that contain spaces" in message


def test_unterminated_quoted_password_is_not_quoted(config_error: Callable[[str], str]) -> None:
    message = config_error("host=h password='top secret")
    assert "top" not in message
    assert "unterminated quoted value of 'password'" in message


def test_undecodable_password_is_named_but_not_shown(config_error: Callable[[str], str]) -> None:
    message = config_error("postgresql://u:%ffsecret@h/")
    assert message == "the password is not valid percent-encoded UTF-8"


def test_password_that_also_appears_in_a_bad_part_is_blanked_out(
    config_error: Callable[[str], str],
) -> None:
    message = config_error("postgresql://u:db2@db1,db2:abc/")
    assert "db2" not in message
    assert f"of host '{REDACTED}'" in message


# --------------------------------------------------------------------------- the ParsedDSN API


def test_host_kwargs_neutral_form() -> None:
    dsn = parse_dsn("postgresql://u:pw@a:1,b:2/app?sslmode=require")
    assert dsn.host_kwargs(HostPort("b", 2)) == {
        "host": "b",
        "port": 2,
        "user": "u",
        "password": "pw",
        "database": "app",
        "sslmode": "require",
    }


def test_host_kwargs_leave_out_unset_fields() -> None:
    assert parse_dsn("mysql://h").host_kwargs() == {"host": "h", "port": 3306}


def test_host_kwargs_need_a_host_when_there_are_several() -> None:
    with pytest.raises(ValueError, match="2 hosts"):
        parse_dsn("postgresql://a,b").host_kwargs()


def test_split_gives_one_single_host_dsn_per_host() -> None:
    dsn = parse_dsn("postgresql://u:pw@a,b:7/app?x=1")
    parts = dsn.split()
    assert [p.to_url(redact=False) for p in parts] == [
        "postgresql://u:pw@a:7/app?x=1",
        "postgresql://u:pw@b:7/app?x=1",
    ]
    assert not any(p.is_multi_host for p in parts)
    assert dsn.is_multi_host


def test_to_url_redacts_the_password_by_default() -> None:
    dsn = parse_dsn("postgresql://u:secret@a,b:7/app")
    assert dsn.to_url() == "postgresql://u:***@a:7,b:7/app"
    assert dsn.to_url(redact=False) == "postgresql://u:secret@a:7,b:7/app"


def test_repr_and_str_hide_the_password() -> None:
    dsn = parse_dsn("postgresql://u:secret@h/app")
    assert repr(dsn) == "ParsedDSN('postgresql://u:***@h:5432/app')"
    assert str(dsn) == "postgresql://u:***@h:5432/app"
    assert "secret" not in f"{dsn} {dsn!r} {[dsn]} {(dsn,)}"


def test_empty_password_is_redacted_too() -> None:
    assert parse_dsn("postgresql://u:@h").to_url() == "postgresql://u:***@h:5432/"


@pytest.mark.parametrize("key", ["sslpassword", "passfile", "client_secret", "auth_token"])
def test_secret_looking_params_are_redacted(key: str) -> None:
    dsn = parse_dsn(f"postgresql://h/?{key}=hush&other=ok")
    assert dsn.params[key] == "hush"
    assert "hush" not in repr(dsn)
    assert dsn.to_url() == f"postgresql://h:5432/?{key}=***&other=ok"


def test_equal_dsns_are_equal_and_hash_alike_whatever_the_param_order() -> None:
    one = parse_dsn("postgresql://h/?a=1&b=2")
    two = parse_dsn("postgresql://h/?b=2&a=1")
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1


def test_parsed_dsn_pickles_and_copies() -> None:
    dsn = parse_dsn("postgresql://u:pw@a,b/db?sslmode=require")
    assert pickle.loads(pickle.dumps(dsn)) == dsn
    assert copy.deepcopy(dsn) == dsn
    assert dataclasses.asdict(dsn)["params"] == {"sslmode": "require"}


def test_params_equal_a_dict_and_hide_secrets_in_repr() -> None:
    params = parse_dsn("postgresql://h/?sslpassword=hush&a=1").params
    assert params == {"sslpassword": "hush", "a": "1"}
    assert "hush" not in repr(params)
    assert dict(params)["sslpassword"] == "hush"


def test_parsed_dsn_is_frozen() -> None:
    dsn = parse_dsn("postgresql://h")
    with pytest.raises(dataclasses.FrozenInstanceError):
        dsn.password = "x"  # type: ignore[misc]


def test_constructor_normalizes_and_validates() -> None:
    dsn = ParsedDSN("MySQL", [HostPort("a", 1), HostPort("a", 1)], user="", database="")  # type: ignore[arg-type]
    assert (dsn.scheme, dsn.hosts, dsn.user, dsn.database) == (
        "mysql",
        (HostPort("a", 1),),
        None,
        None,
    )
    with pytest.raises(ConfigurationError, match="at least one host"):
        ParsedDSN("postgresql", ())
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        ParsedDSN("sqlite", (HostPort("a", 1),))
    with pytest.raises(ConfigurationError, match="'password' is a field"):
        ParsedDSN("postgresql", (HostPort("a", 1),), params={"password": "x"})


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("", 1, "empty host"),
        ("h", 0, "out of range"),
        ("h", 65536, "out of range"),
        ("h", True, "not an integer"),
        ("h", "5432", "not an integer"),
        ("h:1", 1, "not an IPv6 address"),
    ],
)
def test_host_port_validates(host: str, port: int, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HostPort(host, port)


def test_host_port_str_and_hash() -> None:
    assert str(HostPort("db", 5432)) == "db:5432"
    assert str(HostPort("2001:db8::1", 1)) == "[2001:db8::1]:1"
    assert len({HostPort("a", 1), HostPort("a", 1), HostPort("a", 2)}) == 2


# --------------------------------------------------------------------------- redact_dsn


def test_redact_dsn_of_a_valid_dsn_is_the_redacted_url() -> None:
    assert redact_dsn("postgresql://u:secret@h/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("host=h password='a b'") == "postgresql://:***@h:5432/"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:se/cret@h:bad/db",
        "postgresql://u:secret@h:bad/db?sslpassword=secret",
        "postgresql://h:bad/?password=secret&x=1",
        "host=h:bad password=secret",
        "host=h:bad password='sec ret",
        r"host=h:bad password=sec\ ret x",
        "host=h:bad sslpassword = 'se\\'cret' user=u",
        "postgresql:/u:secret@h:bad/db",
        "mysql:u:secret@h:bad",
    ],
)
def test_redact_dsn_of_a_malformed_dsn_hides_secrets(dsn: str) -> None:
    redacted = redact_dsn(dsn)
    assert "se" not in redacted.replace("user", "")
    assert REDACTED in redacted


# --------------------------------------------------------------------------- properties

SCHEMES = ["postgresql", "postgres", "mysql", "mariadb"]
STRUCTURAL = {"host", "port", "user", "password", "dbname", "database"}

any_host = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9]{1,5}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.text(min_size=1, max_size=12).filter(lambda h: ":" not in h),
)
host_ports = st.lists(
    st.builds(HostPort, any_host, st.integers(1, 65535)), min_size=1, max_size=4, unique=True
)
param_maps = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in STRUCTURAL),
    st.text(max_size=8),
    max_size=4,
)
dsns = st.builds(
    ParsedDSN,
    scheme=st.sampled_from(SCHEMES),
    hosts=host_ports.map(tuple),
    user=st.none() | st.text(min_size=1, max_size=10),
    password=st.none() | st.text(max_size=12),
    database=st.none() | st.text(min_size=1, max_size=10),
    params=param_maps,
)


@given(dsns)
@example(ParsedDSN("postgresql", (HostPort("fe80::1%eth0", 1), HostPort("/tmp/a,b", 2))))
@example(ParsedDSN("mysql", (HostPort("h", 1),), user="u:@/?#%", password="p@:/?#%&[],'\\"))
def test_unredacted_url_round_trips(dsn: ParsedDSN) -> None:
    assert parse_dsn(dsn.to_url(redact=False)) == dsn


@given(dsns)
def test_split_round_trips_each_host(dsn: ParsedDSN) -> None:
    parts = dsn.split()
    assert tuple(hp for part in parts for hp in part.hosts) == dsn.hosts
    for part in parts:
        assert parse_dsn(part.to_url(redact=False)) == part


def libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@given(
    hosts=st.lists(plain_host, min_size=1, max_size=4, unique=True),
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=4),
    user=st.text(min_size=1, max_size=10),
    password=st.text(max_size=12),
    database=st.text(min_size=1, max_size=10),
)
def test_keyword_value_quoted_values_round_trip(
    hosts: list[str], ports: list[int], user: str, password: str, database: str
) -> None:
    assume(len(ports) in (1, len(hosts)))
    conninfo = (
        f"host={','.join(hosts)} port={','.join(map(str, ports))} "
        f"user={libpq_quote(user)} password={libpq_quote(password)} "
        f"dbname={libpq_quote(database)}"
    )
    dsn = parse_dsn(conninfo)
    expected_ports = ports * len(hosts) if len(ports) == 1 else ports
    assert dsn.hosts == tuple(HostPort(h, p) for h, p in zip(hosts, expected_ports, strict=True))
    assert (dsn.user, dsn.password, dsn.database) == (user, password, database)


# A password no other generated part can contain: every other part is lower-case.
sentinels = st.text(max_size=10).map(lambda t: f"SENTINEL{t}SENTINEL")
lower = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


def assert_hidden(password: str, text: str) -> None:
    assert "SENTINEL" not in text
    assert password not in text
    assert quote(password, safe="") not in text
    assert repr(password)[1:-1] not in text


@given(
    scheme=st.sampled_from(SCHEMES),
    hosts=st.lists(st.builds(HostPort, lower, st.integers(1, 65535)), min_size=1, max_size=3),
    user=st.none() | lower,
    password=sentinels,
    params=st.dictionaries(lower.filter(lambda k: k not in STRUCTURAL), lower, max_size=3),
)
def test_password_never_appears_in_repr_str_or_redacted_url(
    scheme: str, hosts: list[HostPort], user: str | None, password: str, params: dict[str, str]
) -> None:
    dsn = ParsedDSN(scheme, tuple(hosts), user, password, "db", params)
    reparsed = parse_dsn(dsn.to_url(redact=False))
    for shown in (dsn, reparsed):
        for text in (repr(shown), str(shown), shown.to_url(redact=True), f"{shown!r}"):
            assert_hidden(password, text)
        assert repr([shown, shown.hosts]).count("SENTINEL") == 0


URL_BREAKERS: list[Callable[[str], str]] = [
    lambda url: url.replace("://", "x://", 1),  # unsupported scheme
    lambda url: url.replace("@h1:5432", "@h1:abc", 1),  # port not a number
    lambda url: url.replace("@h1:5432", "@h1:99999", 1),  # port out of range
    lambda url: url.replace("@h1:5432", "@h1:5432,", 1),  # empty host in list
    lambda url: url.replace("@h1:5432", "@[::1:5432", 1),  # unbalanced bracket
    lambda url: url.replace("@h1:5432", "@::1", 1),  # IPv6 without brackets
    lambda url: url.replace("@h1:5432", "@[h1]", 1),  # not IPv6 in brackets
    lambda url: url + "?a=1&a=2",  # duplicate parameter
    lambda url: url + "?novalue",  # parameter without '='
    lambda url: url + "?=x",  # parameter without name
    lambda url: url + "?user=other",  # user given twice
    lambda url: url + "?password=other",  # password given twice
    lambda url: url + "#frag",  # fragment
    lambda url: url.replace("/db", "/%ff", 1),  # undecodable database name
]


@given(
    password=sentinels,
    user=lower,
    breaker=st.sampled_from(URL_BREAKERS),
    encode=st.booleans(),
)
def test_password_never_appears_in_errors_about_other_url_parts(
    password: str, user: str, breaker: Callable[[str], str], encode: bool
) -> None:
    shown = quote(password, safe="") if encode else password
    url = f"postgresql://{user}:{shown}@h1:5432,h2/db"
    bad = breaker(url)
    try:
        parse_dsn(bad)
    except ConfigurationError as exc:
        assert exc.__context__ is None and exc.__cause__ is None
        assert_hidden(password, str(exc))
        assert_hidden(password, repr(exc))
    else:
        # only a raw password whose own characters repaired the breakage can parse
        assert not encode


KV_BREAKERS: list[Callable[[str], str]] = [
    lambda kv: kv + " port=1,2,3",  # port count
    lambda kv: kv + " port=abc",  # port not a number
    lambda kv: kv + " host=x",  # duplicate key
    lambda kv: kv + " dangling",  # missing '='
    lambda kv: kv + " = x",  # missing key
    lambda kv: kv + " application_name='open",  # unterminated quote
    lambda kv: kv + " dbname=a database=b",  # both database keys
    lambda kv: kv.replace("host=h1,h2", "host=h1,,h2"),  # empty host
]


@given(password=sentinels, breaker=st.sampled_from(KV_BREAKERS))
def test_password_never_appears_in_errors_about_other_keyword_value_parts(
    password: str, breaker: Callable[[str], str]
) -> None:
    kv = f"host=h1,h2 user=u password={libpq_quote(password)}"
    with pytest.raises(ConfigurationError) as info:
        parse_dsn(breaker(kv))
    assert info.value.__context__ is None
    assert_hidden(password, str(info.value))


@given(password=sentinels.filter(lambda p: "=" not in p and re.search(r"[\s'\\]", p) is not None))
def test_password_never_appears_when_its_own_quoting_is_broken(password: str) -> None:
    # unquoted password containing spaces / quotes / backslashes, as users get it wrong
    kv = f"host=h password={password} dbname=x"
    try:
        dsn = parse_dsn(kv)
    except ConfigurationError as exc:
        assert "SENTINEL" not in str(exc)
    else:
        assert "SENTINEL" not in repr(dsn)
