"""Tests of gateway.config: defaults, the embedded demo, TOML round trip, every refusal."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    Config,
    ConfigError,
    HttpConfig,
    MediaConfig,
    SubscriberConfig,
    config_to_toml,
    default_config,
    dump_default_toml,
    load_config,
    parse_config,
)
from gateway.store.model import Subscriber

SUBSCRIBER = '[[subscribers]]\nusername = "1001"\npassword = "pw"\n'
TRUNK = '[[trunks]]\nname = "t"\nhost = "127.0.0.1"\n'
PARTNER = '[[partners]]\nname = "p"\napi_key = "k"\n'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="x.toml")
    return str(info.value)


# -- defaults and the embedded demo --------------------------------------------------------


def test_empty_file_is_an_unprovisioned_box() -> None:
    config = parse_config("", source="empty.toml")
    assert config == Config()
    assert (config.subscribers, config.trunks, config.partners) == ([], [], [])
    assert [(x.transport, x.host, x.port) for x in config.sip.listen] == [
        ("udp", "127.0.0.1", 5060),
        ("tcp", "127.0.0.1", 5060),
        ("tls", "127.0.0.1", 5061),
    ]
    assert (config.media.port_min, config.media.port_max) == (20000, 29999)
    assert (config.limits.max_calls, config.limits.cps_per_account) == (2000, 1000)
    assert config.control_socket_path == Path("var/control.sock")
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)


def test_default_config_is_the_loopback_demo() -> None:
    config = default_config()
    first, second = config.subscribers
    assert (first.username, first.password, first.numbers) == (
        "1001",
        "demo1001",
        ["+8613900139001"],
    )
    assert (second.username, second.password, second.numbers) == (
        "1002",
        "demo1002",
        ["+8613900139002"],
    )
    for sub in config.subscribers:
        assert (sub.srtp, sub.fallback, sub.balance) == ("optional", True, "1000000.00")
    (trunk,) = config.trunks
    assert (trunk.name, trunk.host, trunk.port, trunk.transport) == (
        "demo-carrier",
        "127.0.0.1",
        5080,
        "udp",
    )
    assert (trunk.codecs, trunk.prefixes, trunk.tariff_per_minute) == (
        ["PCMA", "PCMU"],
        [""],
        "0.10",
    )
    assert (trunk.billing_increment, trunk.options_ping) == ((60, 60), False)
    (partner,) = config.partners
    assert (partner.name, partner.api_key, partner.budget) == ("demo", "demo-key", "1000000.00")
    assert len(partner.masked_pool) == len(set(partner.masked_pool)) == 100
    assert partner.masked_pool[0] == "+8617000000000"
    assert partner.masked_pool[-1] == "+8617000000099"


def test_default_config_takes_a_var_dir(tmp_path: Path) -> None:
    config = default_config(tmp_path / "state")
    assert config.general.var_path == tmp_path / "state"
    assert config.control_socket_path == tmp_path / "state" / "control.sock"


def test_dumped_default_parses_back_to_the_default() -> None:
    text = dump_default_toml()
    assert text.startswith("# edgegw embedded default")
    assert parse_config(text, source="default.toml") == default_config()


def test_default_config_passes_the_semantic_checks() -> None:
    # parse_config runs every check; re-reading the builtins of the default must not raise.
    builtins = msgspec.to_builtins(default_config())
    assert msgspec.convert(builtins, Config) == default_config()
    assert parse_config(config_to_toml(default_config()), source="d") == default_config()


@given(
    password=st.text(
        alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40
    ).filter(lambda p: not p.startswith("demo"))
)
def test_any_password_survives_the_toml_round_trip(password: str) -> None:
    config = msgspec.structs.replace(
        Config(), subscribers=[SubscriberConfig(username="u", password=password)]
    )
    assert parse_config(config_to_toml(config), source="x") == config


def test_round_trip_of_a_custom_config() -> None:
    text = (
        '[general]\nlog_level = "debug"\nlog_format = "json"\n'
        '[sip]\nlisten = [{transport = "tls", host = "::1", port = 5061}]\nt1 = 1\n'
        '[media]\nadvertised_host = "203.0.113.5"\n'
        '[control]\nsocket = "/run/edgegw.sock"\n'
        f'{SUBSCRIBER}numbers = ["+12025550100"]\nsrtp = "off"\n'
        f'{TRUNK}prefixes = ["1", "44"]\nbilling_increment = [1, 6]\ndefault = true\n'
        f"{PARTNER}"
    )
    config = parse_config(text, source="custom.toml")
    assert config.sip.t1 == 1.0
    assert config.sip.listen[0].host == "::1"
    assert config.media.advertised == "203.0.113.5"
    assert config.control_socket_path == Path("/run/edgegw.sock")
    assert config.trunks[0].billing_increment == (1, 6)
    assert parse_config(config_to_toml(config), source="again") == config


def test_media_advertised_defaults_to_host() -> None:
    assert MediaConfig(host="198.51.100.1").advertised == "198.51.100.1"


def test_http_listen_accepts_ipv6() -> None:
    http = HttpConfig(listen="[::1]:9000")
    assert (http.host, http.port) == ("::1", 9000)


def test_subscriber_entry_becomes_a_store_record() -> None:
    entry = SubscriberConfig(username="u", password="p", numbers=["+12025550100"], srtp="off")
    assert entry.as_subscriber() == Subscriber(
        username="u", password="p", numbers=["+12025550100"], srtp="off"
    )


# -- decoding errors -----------------------------------------------------------------------


def test_error_string_format_and_fields() -> None:
    error = ConfigError("/etc/edgegw.toml", "media.port_min", "expected an int, got str")
    assert str(error) == "/etc/edgegw.toml: media.port_min: expected an int, got str"
    assert (error.file, error.key, error.reason) == (
        "/etc/edgegw.toml",
        "media.port_min",
        "expected an int, got str",
    )
    assert str(ConfigError("f", "", "gone")) == "f: gone"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[media]\nport_min = "20000"', "x.toml: media.port_min: expected an int, got str"),
        ("[sip]\nt1 = true", "x.toml: sip.t1: expected a float, got bool"),
        ("sip = 5", "x.toml: sip: expected a table, got int"),
        ('[sip]\nlisten = "udp"', "x.toml: sip.listen: expected an array, got str"),
        (
            f'{SUBSCRIBER}numbers = "+12025550100"',
            "x.toml: subscribers[0].numbers: expected an array, got str",
        ),
        (
            f"{TRUNK}billing_increment = [60]",
            "x.toml: trunks[0].billing_increment: expected an array of length 2, got 1",
        ),
        ("[general]\nvar_dir = 1979-05-27", "x.toml: general.var_dir: expected a str, got date"),
    ],
)
def test_wrong_type_names_key_and_expected_type(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "x.toml: colour: unknown key"),
        ('[sip]\nrelm = "x"', "x.toml: sip.relm: unknown key (did you mean 'realm'?)"),
        ("[database]\npath = 1", "x.toml: database: unknown key"),
        (
            f"{SUBSCRIBER}balanse = 1",
            "x.toml: subscribers[0].balanse: unknown key (did you mean 'balance'?)",
        ),
        (
            '[sip]\nlisten = [{transport = "udp", host = "127.0.0.1", port = 1, proto = 2}]',
            "x.toml: sip.listen[0].proto: unknown key (did you mean 'port'?)",
        ),
    ],
)
def test_unknown_key_is_refused_by_name(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[subscribers]]\nusername = "1001"',
            "x.toml: subscribers[0].password: required key is missing",
        ),
        ('[[trunks]]\nname = "t"', "x.toml: trunks[0].host: required key is missing"),
        ('[[partners]]\napi_key = "k"', "x.toml: partners[0].name: required key is missing"),
        (
            '[sip]\nlisten = [{transport = "udp", host = "127.0.0.1"}]',
            "x.toml: sip.listen[0].port: required key is missing",
        ),
    ],
)
def test_missing_required_key(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[sip]\nlisten = [{transport = "udp", host = "127.0.0.1", port = 5060}, '
            '{transport = "sctp", host = "127.0.0.1", port = 5060}]',
            "x.toml: sip.listen[1].transport: must be one of udp, tcp, tls",
        ),
        (
            '[general]\nlog_level = "verbose"',
            "x.toml: general.log_level: must be one of debug, info, warning, error",
        ),
        (
            '[general]\nlog_format = "xml"',
            "x.toml: general.log_format: must be one of console, json, journald",
        ),
        (
            f'{SUBSCRIBER}srtp = "required"',
            "x.toml: subscribers[0].srtp: must be one of mandatory, optional, off",
        ),
        (f'{TRUNK}transport = "ws"', "x.toml: trunks[0].transport: must be one of udp, tcp, tls"),
    ],
)
def test_enum_values_are_listed(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sip]\nrealm = ", "x.toml: line 2: TOML syntax error: invalid value at end of file"),
        (
            '[sip]\nrealm = "a"\n\n[sip]\n',
            "x.toml: line 4, column 5: TOML syntax error: cannot declare ('sip',) twice",
        ),
        (
            "[media]\nport_min 20000\n",
            "x.toml: line 2, column 10: TOML syntax error: expected '='"
            " after a key in a key/value pair",
        ),
    ],
)
def test_toml_syntax_error_names_the_line(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize("opening", ["[", "{x = "])
def test_absurd_nesting_is_a_config_error(opening: str) -> None:
    assert error_of("a = " + opening * 100_000) == (
        "x.toml: TOML syntax error: values nested too deeply"
    )


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "edgegw.toml"
    path.write_text(dump_default_toml(), encoding="utf-8")
    assert load_config(path) == default_config()


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "edgegw.toml"
    path.write_text("[media]\nport_min = 20001\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert str(info.value).startswith(f"{path}: media.port_min: must be even")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read the file: No such file"):
        load_config(path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[sip]\nrealm = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: line 2: the file is not valid UTF-8"


# -- semantic checks -----------------------------------------------------------------------


def listen(*hosts: str) -> str:
    entries = ", ".join(
        f'{{transport = "udp", host = "{h}", port = {5060 + i}}}' for i, h in enumerate(hosts)
    )
    return f"[sip]\nlisten = [{entries}]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # media port range
        (
            "[media]\nport_min = 20001",
            "media.port_min: must be even (RTP takes even ports), got 20001",
        ),
        (
            "[media]\nport_max = 30000",
            "media.port_max: must be odd so the range ends with a whole RTP/RTCP pair, got 30000",
        ),
        (
            "[media]\nport_min = 30000\nport_max = 20001",
            "media.port_max: must be greater than media.port_min (30000)",
        ),
        ("[media]\nport_min = 0", "media.port_min: must be a port number from 1 to 65535, got 0"),
        (
            "[media]\nport_max = 70001",
            "media.port_max: must be a port number from 1 to 65535, got 70001",
        ),
        ('[media]\nhost = "media.local"', "media.host: must be an IP address, got 'media.local'"),
        (
            '[media]\nadvertised_host = "x y"',
            "media.advertised_host: must be empty or an IP address, got 'x y'",
        ),
        (
            '[media]\nhost6 = "v6.local"',
            "media.host6: must be empty or an IP address, got 'v6.local'",
        ),
        (
            '[media]\nhost6 = "127.0.0.2"',
            "media.host6: must be of the other address family than media.host (127.0.0.1)",
        ),
        (
            '[media]\nsrtp_suites = ["F8_128_HMAC_SHA1_80"]',
            "media.srtp_suites[0]: must be one of AES_CM_128_HMAC_SHA1_80, "
            "AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM",
        ),
        (
            '[media]\nsdes_trusted_networks = ["10.0.0.0/33"]',
            "media.sdes_trusted_networks[0]: must be a network like 10.0.0.0/8, got '10.0.0.0/33'",
        ),
        ("[media]\nptime = 25", "media.ptime: must be one of 10, 20, 30, 40, 60 (ms), got 25"),
        ('[routing]\ncountry = "FR"', "routing.country: must be one of CN, DE, GB, US, got 'FR'"),
        (
            '[routing]\nemergency = ["1x"]',
            "routing.emergency[0]: must be a short code of 2 to 6 digits, got '1x'",
        ),
        (
            '[media]\napp_codecs = ["GSM"]',
            "media.app_codecs[0]: unknown codec 'GSM' (known: PCMA, PCMU, G722, G729, opus)",
        ),
        # durations
        (
            "[media]\ntimeout = 0",
            "media.timeout: must be a number of seconds greater than 0, got 0.0",
        ),
        (
            "[media]\nlatch_window = -1.5",
            "media.latch_window: must be a number of seconds greater than 0, got -1.5",
        ),
        ("[sip]\nt1 = 0.0", "sip.t1: must be a number of seconds greater than 0, got 0.0"),
        ("[sip]\nt4 = nan", "sip.t4: must be a number of seconds greater than 0, got nan"),
        (
            "[sip]\ntcp_idle_timeout = inf",
            "sip.tcp_idle_timeout: must be a number of seconds greater than 0, got inf",
        ),
        (
            "[sip]\nno_answer_timeout = -1",
            "sip.no_answer_timeout: must be a number of seconds greater than 0, got -1.0",
        ),
        ("[sip]\nt1 = 5.0", "sip.t2: must be at least sip.t1 (5.0)"),
        # expiry bounds
        (
            "[sip]\ndefault_expires = 30",
            "sip.default_expires: must be between sip.min_expires (60) and sip.max_expires (3600)",
        ),
        (
            "[sip]\ndefault_expires = 7200",
            "sip.default_expires: must be between sip.min_expires (60) and sip.max_expires (3600)",
        ),
        ("[sip]\nmin_expires = 4000", "sip.min_expires: must not exceed sip.max_expires (3600)"),
        ("[sip]\nmin_expires = 0", "sip.min_expires: must be at least 1, got 0"),
        ("[sip]\nmin_se = 0", "sip.min_se: must be at least 1, got 0"),
        (
            "[sip]\nsession_expires = 100\nmin_se = 120",
            "sip.session_expires: must be at least sip.min_se (120)",
        ),
        (
            "[sip]\nmax_message_size = 100",
            "sip.max_message_size: must be from 1024 to 65535, got 100",
        ),
        # listeners
        ("[sip]\nlisten = []", "sip.listen: must name at least one address to listen on"),
        (listen("localhost"), "sip.listen[0].host: must be an IP address, got 'localhost'"),
        (
            '[sip]\nlisten = [{transport = "udp", host = "127.0.0.1", port = 5060}, '
            '{transport = "udp", host = "127.0.0.1", port = 5060}]',
            "sip.listen[1]: duplicates sip.listen[0]",
        ),
        (
            '[sip]\nlisten = [{transport = "udp", host = "127.0.0.1", port = 0}]',
            "sip.listen[0].port: must be a port number from 1 to 65535, got 0",
        ),
        (
            '[sip]\nrealm = "a\\"b"',
            "sip.realm: must be non-empty, without quotes, backslashes or control characters",
        ),
        ('[general]\nvar_dir = ""', "general.var_dir: must not be empty"),
        ("[limits]\nmax_calls = 0", "limits.max_calls: must be at least 1, got 0"),
        ("[limits]\ncps_per_account = -5", "limits.cps_per_account: must be at least 1, got -5"),
        (
            '[http]\nlisten = "8080"',
            'http.listen: must be "HOST:PORT" (IPv6 as "[HOST]:PORT"), got \'8080\'',
        ),
        ('[http]\nlisten = "web:8080"', "http.listen: must name an IP address, got 'web'"),
        (
            '[http]\nlisten = "0.0.0.0:99999"',
            "http.listen: port must be from 1 to 65535, got 99999",
        ),
        # subscribers
        (
            SUBSCRIBER + SUBSCRIBER,
            "subscribers[1].username: duplicate username '1001' (also subscribers[0])",
        ),
        (
            '[[subscribers]]\nusername = "a b"\npassword = "pw"',
            "subscribers[0].username: must be 1 to 64 letters, digits or . _ ~ + -",
        ),
        (
            '[[subscribers]]\nusername = "u"\npassword = "pw"\ncodecs = ["opus", "OPUS"]',
            "subscribers[0].codecs[1]: codec 'OPUS' is listed twice",
        ),
        (
            '[[subscribers]]\nusername = "u"\npassword = ""',
            "subscribers[0].password: must not be empty",
        ),
        (
            f'{SUBSCRIBER}numbers = ["+8613900139001", "8613900139002"]',
            "subscribers[0].numbers[1]: must be E.164: '+' then 8 to 15"
            " digits, got '8613900139002'",
        ),
        (
            f'{SUBSCRIBER}numbers = ["+1234567"]',
            "subscribers[0].numbers[0]: must be E.164: '+' then 8 to 15 digits, got '+1234567'",
        ),
        (
            f'{SUBSCRIBER}numbers = ["+1234567890123456"]',
            "subscribers[0].numbers[0]: must be E.164: '+' then 8 to 15"
            " digits, got '+1234567890123456'",
        ),
        (
            f'{SUBSCRIBER}numbers = ["+12025550100"]\n'
            '[[subscribers]]\nusername = "1002"\npassword = "pw"\nnumbers = ["+12025550100"]',
            "subscribers[1].numbers[0]: duplicate number +12025550100"
            " (also subscribers[0].numbers[0])",
        ),
        (
            f'{SUBSCRIBER}numbers = ["+12025550100"]\n{PARTNER}masked_pool = ["+12025550100"]',
            "partners[0].masked_pool[0]: duplicate number +12025550100"
            " (also subscribers[0].numbers[0])",
        ),
        (
            f'{SUBSCRIBER}balance = "-1.00"',
            "subscribers[0].balance: must be a non-negative decimal"
            " string such as \"12.50\", got '-1.00'",
        ),
        (
            f'{SUBSCRIBER}balance = "1e3"',
            "subscribers[0].balance: must be a non-negative decimal"
            " string such as \"12.50\", got '1e3'",
        ),
        # demo secrets
        (
            listen("127.0.0.1", "0.0.0.0")
            + '[[subscribers]]\nusername = "u"\npassword = "demo1001"',
            "subscribers[0].password: demo passwords are accepted only"
            " while SIP listens on loopback",
        ),
        (
            '[http]\nlisten = "198.51.100.1:8080"\n[[partners]]\nname = "p"\napi_key = "demo-key"',
            "partners[0].api_key: demo keys are accepted only while HTTP listens on loopback",
        ),
        # trunks
        (TRUNK + TRUNK, "trunks[1].name: duplicate name 't' (also trunks[0])"),
        (
            '[[trunks]]\nname = ""\nhost = "h"',
            "trunks[0].name: must be 1 to 64 letters, digits or . _ -",
        ),
        (
            '[[trunks]]\nname = "t"\nhost = "bad host"',
            "trunks[0].host: must be an IP address or a host name, got 'bad host'",
        ),
        (
            f"{TRUNK}port = 65536",
            "trunks[0].port: must be a port number from 1 to 65535, got 65536",
        ),
        (f"{TRUNK}codecs = []", "trunks[0].codecs: must name at least one codec"),
        (
            f'{TRUNK}codecs = ["PCMA", "GSM"]',
            "trunks[0].codecs[1]: unknown codec 'GSM' (known: PCMA, PCMU, G722, G729, opus)",
        ),
        (f'{TRUNK}codecs = ["PCMA", "pcma"]', "trunks[0].codecs[1]: codec 'pcma' is listed twice"),
        (
            f"{TRUNK}prefixes = []",
            'trunks[0].prefixes: must name at least one prefix ("" takes every number)',
        ),
        (
            f'{TRUNK}prefixes = ["+86"]',
            "trunks[0].prefixes[0]: must be leading digits of the E.164"
            " number without '+', got '+86'",
        ),
        (f'{TRUNK}prefixes = ["86", "86"]', "trunks[0].prefixes[1]: prefix '86' is listed twice"),
        (
            f'{TRUNK}tariff_per_minute = "ten"',
            "trunks[0].tariff_per_minute: must be a non-negative decimal"
            " string such as \"12.50\", got 'ten'",
        ),
        (
            f"{TRUNK}billing_increment = [0, 60]",
            "trunks[0].billing_increment: both increments must be at least 1 second, got [0, 60]",
        ),
        (
            f'{TRUNK}default = true\n[[trunks]]\nname = "u"\nhost = "h"\ndefault = true',
            "trunks[1].default: only one trunk may be the default (also trunks[0])",
        ),
        # partners
        (PARTNER + PARTNER, "partners[1].name: duplicate name 'p' (also partners[0])"),
        ('[[partners]]\nname = "p"\napi_key = ""', "partners[0].api_key: must not be empty"),
        (
            f'{PARTNER}budget = "1,000"',
            "partners[0].budget: must be a non-negative decimal string"
            " such as \"12.50\", got '1,000'",
        ),
        (
            f'{PARTNER}masked_pool = ["+8617000000000", "+8617000000000"]',
            "partners[0].masked_pool[1]: duplicate number +8617000000000"
            " (also partners[0].masked_pool[0])",
        ),
        (
            f'{SUBSCRIBER}balance = "10.005"',
            "subscribers[0].balance: must be whole cents (2 decimals), got '10.005'",
        ),
        (
            '[limits]\ndaily_spend_per_account = "0.001"',
            "limits.daily_spend_per_account: must be whole cents (2 decimals), got '0.001'",
        ),
        (
            '[limits]\ndaily_spend_per_account = "lots"',
            "limits.daily_spend_per_account: must be a non-negative decimal string such as"
            " \"12.50\", got 'lots'",
        ),
        (
            f'{PARTNER}masked_pool = ["017000000000"]',
            "partners[0].masked_pool[0]: must be E.164: '+' then 8 to 15"
            " digits, got '017000000000'",
        ),
    ],
)
def test_semantic_check(text: str, message: str) -> None:
    tomllib.loads(text)  # every case is valid TOML: the refusal is the semantic check's
    assert error_of(text) == f"x.toml: {message}"


def test_demo_passwords_are_fine_on_loopback_only() -> None:
    demo = '[[subscribers]]\nusername = "u"\npassword = "demo-u"\n'
    assert parse_config(listen("127.0.0.1", "::1", "127.0.0.2") + demo, source="x").subscribers
    production = '[[subscribers]]\nusername = "u"\npassword = "Zq8-long-secret"\n'
    assert parse_config(listen("0.0.0.0") + production, source="x").subscribers


def test_demo_key_is_fine_while_http_is_on_loopback() -> None:
    text = '[http]\nlisten = "[::1]:8080"\n[[partners]]\nname = "p"\napi_key = "demo-key"'
    assert parse_config(text, source="x").partners[0].api_key == "demo-key"


def test_image_style_config_without_demo_secrets_may_listen_everywhere() -> None:
    text = (
        listen("0.0.0.0")
        + '[media]\nhost = "0.0.0.0"\nadvertised_host = "203.0.113.10"\n'
        + '[http]\nlisten = "0.0.0.0:8080"\n'
    )
    config = parse_config(text, source="x")
    assert config.media.advertised == "203.0.113.10"
    assert config.subscribers == []
