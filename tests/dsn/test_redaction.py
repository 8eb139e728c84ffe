"""No secret in what qdbpool.dsn shows: redact_dsn of any input, Redactor, ambiguous URLs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from qdbpool.dsn import (
    REDACTED,
    HostPort,
    ParsedDSN,
    Redactor,
    is_secret_key,
    parse_dsn,
    redact_dsn,
)
from qdbpool.errors import ConfigurationError

# Passwords are built from letters no other generated part holds (every other part is
# lower-case, digits or punctuation), so finding them in an output can only be a leak.
LETTERS = "JKQXZ"
DISTINCT_RUN = re.compile(f"[{LETTERS}]{{4,}}")


def distinctive(min_size: int = 4, max_size: int = 8) -> st.SearchStrategy[str]:
    return st.text(alphabet=LETTERS, min_size=min_size, max_size=max_size)


def runs(password: str) -> list[str]:
    """The pieces of `password` of 4 or more distinctive letters in a row."""
    return DISTINCT_RUN.findall(password)


def assert_hidden(password: str, written: str, shown: str) -> None:
    for form in {password, written, quote(password, safe=""), quote_plus(password)}:
        assert form not in shown, (form, shown)


# --------------------------------------------------------------------------- redact_dsn


@pytest.mark.parametrize(
    "dsn",
    [
        "//app:QXZJ@db1/app",
        "postgresql//app:QXZJ@db1/app",
        "://app:QXZJ@db1/app",
        "app%40corp:QXZJ@db1/app",
        "//app:QXZJ@db1/app?sslmode=require",
        "postgresql//app:QXZJ@db1/app?sslmode=require",
        "postgresql://app:QXZJ/app",  # the '@host' forgotten: QXZJ looks like a port
        "postgresql://h:bad/?p%61ssword=QXZJ",
    ],
)
def test_redact_dsn_hides_the_password_of_malformed_urls(dsn: str) -> None:
    shown = redact_dsn(dsn)
    assert "QXZJ" not in shown
    assert REDACTED in shown


# Fronts of a URL as users get them wrong (or right).
PREFIXES = [
    "",
    "postgresql://",
    "postgres://",
    "mysql://",
    "mariadb://",
    "POSTGRESQL://",
    "//",
    "/",
    "postgresql//",
    "postgresql:/",
    "postgresql:",
    "postgresql:///",
    "://",
    ":",
    "http://",
    "postgresql://,",
    "postgresql:// ",
]
JUNK = "abcdefghijklmnopqrstuvwxyz0123456789/?#&=@:,.[]%+;'\" \\-_"
junk = st.text(alphabet=JUNK, max_size=12)
users = st.sampled_from(["", "app", "app%40corp", "app@corp", "a:b", "u s", "passenger"])
hostlists = st.sampled_from(["", "db1", "db1,db2", "db1:5432,db2", "[::1]:5433", "db1:x", "db1,"])
# What a password may hold besides its distinctive letters.
PASSWORD_EXTRAS = "@/?#=&:%,;[] '\"\\+"
passwords = st.lists(
    st.one_of(distinctive(1, 4), st.sampled_from(PASSWORD_EXTRAS)), min_size=1, max_size=8
).map("".join)


@given(
    lead=st.sampled_from(["", " ", "\t"]),
    prefix=st.sampled_from(PREFIXES),
    user=users,
    password=passwords.filter(lambda p: len(runs(p)) > 0),
    encode=st.booleans(),
    hosts=hostlists,
    tail=junk,
)
@example(lead="", prefix="", user="", password="QXZJ", encode=False, hosts="db1", tail="/app")
@example(
    lead="", prefix="postgresql://", user="app", password="Q@XZJK/KQX?JZ=1", encode=False,
    hosts="db1", tail="/app",
)  # fmt: skip
def test_redact_dsn_never_shows_a_password_of_the_user_info(
    lead: str, prefix: str, user: str, password: str, encode: bool, hosts: str, tail: str
) -> None:
    written = quote(password, safe="") if encode else password
    dsn = f"{lead}{prefix}{user}:{written}@{hosts}{tail}"
    shown = redact_dsn(dsn)
    assert_hidden(password, written, shown)
    # Everything before the last '@' is the password's, whatever it holds: no piece shows.
    for run in runs(password):
        assert run not in shown, (run, shown)


@given(
    prefix=st.sampled_from(PREFIXES),
    hosts=hostlists,
    key=st.sampled_from(["password", "sslpassword", "PASSWORD", "passwd", "auth_token"]),
    password=passwords.filter(lambda p: len(runs(p)) > 0),
    encode=st.booleans(),
    before=junk,
    after=junk,
)
def test_redact_dsn_never_shows_a_password_given_as_a_query_parameter(
    prefix: str, hosts: str, key: str, password: str, encode: bool, before: str, after: str
) -> None:
    written = quote(password, safe="") if encode else password
    shown = redact_dsn(f"{prefix}{hosts}/db?{before}&{key}={written}&{after}")
    assert_hidden(password, written, shown)


def libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


KEYWORD_SHAPES = [
    "{key}={pw}",
    "{key} = {pw}",
    "{key}= {pw}",
    "{key}={quoted}",
    "{key} ={quoted}",
    "{key}='{pw}",  # unterminated quote
    "{key}={quoted}{pw}",
    "{key} {pw}",  # the '=' forgotten
]
others = st.lists(
    st.sampled_from(
        ["host=db1,db2", "port=5432", "port=x", "user=app", "dbname=app", "host=[::1",
         "bogus", "'", "=", "host=db1 host=db2", "sslmode=require", "app:x@db1", "x=a\\"]
    ),
    max_size=3,
).map(" ".join)  # fmt: skip


@given(
    key=st.sampled_from(["password", "sslpassword", "PassWord", "passwd", "secret"]),
    shape=st.sampled_from(KEYWORD_SHAPES),
    password=passwords.filter(lambda p: len(runs(p)) > 0),
    before=others,
    after=others,
)
@example(key="password", shape="{key}={pw}", password="QXZJ KQXZ", before="", after="")
def test_redact_dsn_never_shows_a_password_of_a_keyword_value_string(
    key: str, shape: str, password: str, before: str, after: str
) -> None:
    pair = shape.format(key=key, pw=password, quoted=libpq_quote(password))
    shown = redact_dsn(f"{before} {pair} {after}")
    assert_hidden(password, password, shown)


@given(st.text(max_size=40))
def test_redact_dsn_and_parse_dsn_raise_nothing_but_configuration_errors(text: str) -> None:
    with contextlib.suppress(ConfigurationError):
        parse_dsn(text)
    assert isinstance(redact_dsn(text), str)


# --------------------------------------------------------------------------- ambiguous URLs


def test_a_raw_at_sign_in_the_password_followed_by_a_slash_is_refused_as_ambiguous(
    config_error: Callable[[str], str],
) -> None:
    message = config_error("postgresql://app:p@ss/w?rd=1@db1/app")
    assert "percent-encode" in message
    assert "ambiguous" in message
    for piece in ("p@ss", "'ss'", "w?rd", "rd=1"):
        assert piece not in message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:QX@JZ/KQ?XJ=1@db1/app",
        "postgresql://app:QX@JZ?KQ=XJ@db1/app",
        "postgresql://app:QX@JZ#KQ@db1/app",
        "mysql://app:QX@JZ/KQ?XJ=1@db1/app",
        "postgresql://app:QX@JZ/KQ?XJ=1@db1/app?sslmode=require",
        # an unencoded special character in the password
        "postgresql://u:Qx/Zy@h/db",
        "postgresql://u:Qx?Zy@h/db",
        "postgresql://u:12?Zy@h/db",
        "postgresql://u:Qx#Zy@h/db",
        "postgresql://u@x:Qx/Zy@h/db",
    ],
)
def test_an_ambiguous_url_quotes_no_piece_of_it(
    dsn: str, config_error: Callable[[str], str]
) -> None:
    message = config_error(dsn)
    assert "percent-encode" in message
    assert re.search(f"[{LETTERS}]", message) is None


def test_an_ambiguous_url_is_refused_by_the_factories_too() -> None:
    from qdbpool.factories import MySQL, Postgres

    for factory, scheme in ((Postgres, "postgresql"), (MySQL, "mysql")):
        with pytest.raises(ConfigurationError, match="percent-encode") as info:
            factory(f"{scheme}://app:QX@JZ/KQ?XJ=1@db1/app")
        assert re.search(f"[{LETTERS}]", str(info.value)) is None


@given(
    head=distinctive(1, 4),
    separator=st.sampled_from(["/", "?", "#", "/x?", "?a=", "/d?k="]),
    rest=distinctive(1, 4),
    hosts=st.sampled_from(["db1", "db1,db2:6432", "[::1]"]),
)
def test_a_raw_at_sign_then_slash_question_mark_or_hash_is_always_refused(
    head: str,
    separator: str,
    rest: str,
    hosts: str,
    config_error: Callable[[str], str],
) -> None:
    message = config_error(f"postgresql://app:{head}@{rest}{separator}{rest}@{hosts}/app")
    assert "percent-encode" in message
    assert re.search(f"[{LETTERS}]", message) is None


@given(password=passwords.filter(lambda p: len(runs(p)) > 0 and not set(p) & set("/?#")))
def test_a_raw_at_sign_without_slash_question_mark_or_hash_ends_at_the_last_at(
    password: str,
) -> None:
    # Unambiguous: the authority ends at the first '/', '?' or '#', the host list at its
    # last '@'. ('%' must be valid percent-encoding to be taken as is.)
    dsn = parse_dsn(f"postgresql://app:{password}@db1,db2/app")
    assert dsn.hosts == (HostPort("db1", 5432), HostPort("db2", 5432))
    assert dsn.user == "app"
    assert dsn.password is not None
    assert_hidden(password, password, repr(dsn))


def test_a_raw_at_sign_in_a_query_value_must_be_percent_encoded(
    config_error: Callable[[str], str],
) -> None:
    assert "percent-encode" in config_error("postgresql://h/db?application_name=me@box")
    dsn = parse_dsn("postgresql://h/db?application_name=me%40box")
    assert dsn.params == {"application_name": "me@box"}


# --------------------------------------------------------------------------- ports of any size

huge = st.one_of(
    st.integers(min_value=65536),
    st.integers(max_value=0),
    st.sampled_from([10**400, -(10**400), 10**5000]),
)


@given(port=huge)
def test_a_port_of_any_size_is_a_configuration_error(port: int) -> None:
    with pytest.raises(ConfigurationError, match="out of range"):
        HostPort("h", port)
    with pytest.raises(ConfigurationError, match="default_port"):
        parse_dsn("postgresql://h", default_port=port)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://h:" + "1" + "0" * 400 + "/db",
        "postgresql://h:" + "0" * 5000 + "1/db",
        "postgresql://h:" + "9" * 5000 + "/db",
        "host=h port=" + "0" * 5000 + "1",
        "host=h,i port=1," + "1" * 5000,
        "mysql://h:" + "0" * 5000 + "70000/db",
    ],
)
def test_a_port_text_of_any_length_is_a_configuration_error_or_a_port(dsn: str) -> None:
    try:
        parsed = parse_dsn(dsn)
    except ConfigurationError as exc:
        assert "out of range" in str(exc)
        assert len(str(exc)) < 200
    else:  # leading zeros: "000...01" is port 1
        assert all(1 <= hp.port <= 65535 for hp in parsed.hosts)


def test_leading_zeros_of_a_port_are_ignored_whatever_their_number() -> None:
    assert parse_dsn("postgresql://h:" + "0" * 5000 + "1/db").hosts == (HostPort("h", 1),)


# --------------------------------------------------------------------------- key/value names


@pytest.mark.parametrize(
    "dsn",
    [
        "//app:QXZJ@db1/app?sslmode=require",
        "postgresql//app:QXZJ@db1/app?x=1",
        ":QXZJ@db1/app?x=1",
        "app:QXZJ@db1 sslmode=require",
    ],
)
def test_a_url_without_its_scheme_is_not_read_as_key_value_options(
    dsn: str, config_error: Callable[[str], str]
) -> None:
    message = config_error(dsn)
    assert "QXZJ" not in message
    assert "option name" in message


@pytest.mark.parametrize(
    "password", ["QXZJ", "1234567QXZJ", "12345678901", "99999", "70000", "000070000"]
)
def test_a_url_port_is_not_quoted_when_it_may_be_a_password(
    password: str, config_error: Callable[[str], str]
) -> None:
    # 'user:password/db' with the '@host' forgotten: the "port" is the password.
    message = config_error(f"postgresql://app:{password}/db")
    assert password not in message
    assert "port" in message and "of host 'app'" in message


@given(
    scheme=st.sampled_from(["postgresql://", "mysql://", "mariadb://"]),
    password=passwords.filter(lambda p: len(runs(p)) > 0 and not set(p) & set("@/?#")),
    tail=st.sampled_from(["", "/db", "/db?sslmode=require"]),
)
@example(scheme="postgresql://", password="QX:ZJ", tail="/db")
@example(scheme="postgresql://", password="QXZ]J", tail="/db")
@example(scheme="mysql://", password="[QXZJ", tail="/db")
@example(scheme="postgresql://", password="1,[QXZJ", tail="/db")
def test_no_error_quotes_a_password_whose_at_host_was_forgotten(
    scheme: str, password: str, tail: str
) -> None:
    # 'user:password' with no '@' reads as hosts and ports: whichever of them is malformed,
    # the message quotes none of it (it did, for a password holding ':', '[' or ']').
    try:
        parse_dsn(f"{scheme}app:{password}{tail}")
    except ConfigurationError as exc:
        for run in runs(password):
            assert run not in str(exc), (run, str(exc))


def test_a_url_port_is_quoted_after_a_user_name(config_error: Callable[[str], str]) -> None:
    assert "port '5x' of host 'h'" in config_error("postgresql://u:pw@h:5x/db")


# --------------------------------------------------------------------------- Redactor


def test_redactor_blanks_every_form_a_secret_takes() -> None:
    scrub = Redactor(["p w/@:%'"])
    shown = scrub(
        "a p w/@:%' b p%20w%2F%40%3A%25%27 c p+w%2F%40%3A%25%27 d p%20w/%40%3A%25%27 "
        "e \"p w/@:%'\" f 'p w/@:%\\''"
    )
    assert "p w" not in shown
    assert "p%20w" not in shown
    assert "p+w" not in shown
    assert shown.count(REDACTED) == 6


def test_redactor_inside_quotes_leaves_the_fixed_words_alone() -> None:
    scrub = Redactor(["a"])
    assert scrub.inside_quotes("bad host 'a,b' near 'x'") == f"bad host '{REDACTED},b' near 'x'"
    assert scrub("bad a") == f"b{REDACTED}d {REDACTED}"


def test_redactor_ignores_empty_and_none_and_shows_other_values_as_str() -> None:
    assert not Redactor([None, ""])
    assert Redactor([None, ""])("text") == "text"
    assert Redactor([12345])("code 12345") == f"code {REDACTED}"
    assert "12345" not in repr(Redactor([12345]))


def test_redactor_replaces_the_longest_form_whole() -> None:
    assert Redactor(["ab", "abcd"])("xabcdx") == f"x{REDACTED}x"


@given(
    secret=st.text(min_size=1, max_size=10).filter(lambda s: "*" not in s),
    noise=st.text(max_size=10),
)
def test_redactor_output_never_holds_the_secret(secret: str, noise: str) -> None:
    shown = Redactor([secret])(noise + secret + noise + repr(secret) + quote(secret, safe=""))
    assert secret not in shown


def test_is_secret_key_names_password_secret_and_token_keys() -> None:
    assert all(map(is_secret_key, ["password", "sslpassword", "PASSWD", "auth_token", "secret"]))
    assert not any(map(is_secret_key, ["host", "user", "sslmode", "application_name"]))


def test_parsed_dsn_secrets_are_the_password_and_secret_parameters() -> None:
    dsn = parse_dsn("postgresql://u:pw@h/db?sslpassword=sp&sslmode=require&auth_token=")
    assert dsn.secrets == ("pw", "sp")
    assert ParsedDSN("mysql", (HostPort("h", 1),)).secrets == ()
