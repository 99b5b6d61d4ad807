"""encoders.text.pii and lmm.pii: personal data is found where it is and only there, masked with stable placeholders,
and only the request's own values come back."""

from __future__ import annotations

import pytest

from encoders.text.pii import find_pii, iban_ok, luhn_ok
from lmm.pii import Masker


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in find_pii(text)]


# --- payment cards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "6011 0009 9013 9424",
    ],
)
def test_luhn_valid_cards_are_found(card: str) -> None:
    assert kinds(f"the card {card} was declined") == [("CARD", card)]


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "1234 5678 9012 3456", "5555-5555-5555-4445"])
def test_numbers_that_fail_luhn_are_not_cards(number: str) -> None:
    assert not any(kind == "CARD" for kind, _ in kinds(f"reference {number} please"))


def test_luhn() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_all_zero_number_is_not_a_card() -> None:
    assert kinds("0000 0000 0000 0000") == []


# --- IBANs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
    ],
)
def test_valid_ibans_are_found(iban: str) -> None:
    assert iban_ok(iban)
    assert kinds(f"pay to {iban} today") == [("IBAN", iban)]


@pytest.mark.parametrize(
    "iban",
    [
        "DE88 3704 0044 0532 0130 00",  # check digits off by one
        "GB82WEST1234569876543",  # one character short for GB
        "ZZ89370400440532013000",
    ],
)  # no such country
def test_ibans_with_bad_check_digits_length_or_country_are_not_found(iban: str) -> None:
    assert not iban_ok(iban)
    assert not any(kind == "IBAN" for kind, _ in kinds(f"pay to {iban} today"))


def test_two_ibans_in_a_row_are_both_found() -> None:
    text = "from DE89 3704 0044 0532 0130 00 to GB82WEST12345698765432"
    assert [k for k, _ in kinds(text)] == ["IBAN", "IBAN"]


# --- emails and phones --------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["john.doe@example.com", "a.b+tag@mail.example.co.uk", "X_Y@sub-domain.io"])
def test_emails(email: str) -> None:
    assert kinds(f"write to {email}.") == [("EMAIL", email)]


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "+1 (415) 555-2671",
        "+14155552671",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "020 7946 0958",
        "01 23 45 67 89",
        "030 12345678",
        "+49 30 1234567",
        "1-800-555-1234",
    ],
)
def test_phone_numbers(phone: str) -> None:
    assert kinds(f"call me on {phone} after 5") == [("PHONE", phone)]


@pytest.mark.parametrize(
    "text",
    [
        "error 0x80070005 after the update",
        "code E-42 on the panel",
        "error code 1234-5678",
        "ticket 555-123-4567 was closed",
        "installed on 2024-01-15 and 15.01.2024 and 01/02/2024",
        "build 10.0.19041.1234 and version 22.04.3",
        "KB5034441 failed",
        "at 12:30:45 the job stopped",
        "items 100-200 of 4500",
        "1 000 000 rows",
    ],
)
def test_codes_dates_versions_and_counts_are_not_phones(text: str) -> None:
    assert [k for k, _ in kinds(text)] == []


def test_an_ip_is_an_ip_not_a_phone() -> None:
    assert kinds("printer at 192.168.1.10 and 10.20.30.40") == [("IP", "192.168.1.10"), ("IP", "10.20.30.40")]


def test_ipv6_and_mac_found_but_times_and_cpp_names_are_not() -> None:
    # A MAC address identifies one device (personal data, like an IP); it is not read as IPv6.
    text = "fe80::1ff:fe23:4567:890a, 2001:db8::1, MAC 00:1A:2B:3C:4D:5E, std::vector, 10:30"
    assert kinds(text) == [("IP", "fe80::1ff:fe23:4567:890a"), ("IP", "2001:db8::1"), ("IP", "00:1A:2B:3C:4D:5E")]
    assert [f.detail for f in find_pii(text)] == ["ipv6", "ipv6", "mac"]
    assert kinds("serial 12-34-56-78-90-12") == []  # digits only: a number, not a MAC


def test_version_numbers_with_four_parts_are_not_ips() -> None:
    assert kinds("upgrade to version 1.2.3.4 or v2.0.0.1") == []


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        ("ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", "github_token"),
        ("gho_16C7e42F292c6912E7710c838347Ae178B4a", "github_token"),
        ("xoxb-1234567890-abcdefghijklmn", "slack_token"),
        ("sk-proj-abcdefghijklmnopqrstuvwx12", "openai_key"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
        ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "hex_secret"),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "high_entropy"),
    ],
)
def test_tokens_and_keys(token: str, detail: str) -> None:
    found = find_pii(f"the key {token} leaked")
    assert [(f.kind, f.value, f.detail) for f in found] == [("SECRET", token, detail)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("password: hunter22", "hunter22"),
        ("api_key=abcd1234xyz", "abcd1234xyz"),
        ("API key: zz-998877", "zz-998877"),
        ("my password is S3cret!", "S3cret!"),
        ("client_secret = 'q8Zr77'", "q8Zr77"),
    ],
)
def test_secret_pairs_mask_only_the_value(text: str, value: str) -> None:
    assert kinds(text) == [("SECRET", value)]


@pytest.mark.parametrize(
    "text",
    [
        "the password is incorrect",
        "Password: required",
        "token: expired",
        "Password: ********",
        "AbstractSingletonProxyFactoryBean2024",
        "ThisIsAVeryLongJavaClassNameFactory1",
        "C:/Users/jdoe/AppData/Local/Temp/setup_x64",
    ],
)
def test_status_words_and_identifiers_are_not_secrets(text: str) -> None:
    assert kinds(text) == []


# --- masking ------------------------------------------------------------------------------------


def test_mask_unmask_round_trip() -> None:
    text = (
        "Mail jane@corp.example or call +44 20 7946 0958; card 4111 1111 1111 1111, "
        "IBAN GB82WEST12345698765432, key AKIAIOSFODNN7EXAMPLE, host 10.0.0.5."
    )
    masker = Masker()
    masked, findings = masker.mask(text)
    assert masked == ("Mail [EMAIL_1] or call [PHONE_1]; card [CARD_1], IBAN [IBAN_1], key [SECRET_1], host [IP_1].")
    assert [f.placeholder for f in findings] == [
        "[EMAIL_1]",
        "[PHONE_1]",
        "[CARD_1]",
        "[IBAN_1]",
        "[SECRET_1]",
        "[IP_1]",
    ]
    assert masker.unmask(masked) == text


def test_placeholders_are_stable_within_a_request() -> None:
    masker = Masker()
    first, _ = masker.mask("a@x.example, b@x.example, A@X.example")
    second, _ = masker.mask("again: b@x.example and 4111-1111-1111-1111 / 4111 1111 1111 1111")
    assert first == "[EMAIL_1], [EMAIL_2], [EMAIL_1]"
    assert second == "again: [EMAIL_2] and [CARD_1] / [CARD_1]"
    assert masker.counts() == {"EMAIL": 2, "CARD": 1}


def test_unmask_restores_only_the_requests_own_values() -> None:
    masker = Masker()
    masker.mask("mine: me@home.example")
    masker.mask("retrieved: other@customer.example", restorable=False)
    assert masker.unmask("[EMAIL_1] [EMAIL_2] [EMAIL_7] [CARD_1]") == "me@home.example [EMAIL_2] [EMAIL_7] [CARD_1]"


def test_a_value_the_request_also_contains_becomes_restorable() -> None:
    masker = Masker()
    masker.mask("doc: shared@corp.example", restorable=False)
    masker.mask("I am shared@corp.example")
    assert masker.unmask("[EMAIL_1]") == "shared@corp.example"


def test_findings_and_masker_do_not_print_values() -> None:
    masker = Masker()
    _, findings = masker.mask("card 4111 1111 1111 1111")
    assert "4111" not in repr(findings) and "4111" not in repr(masker)


def test_text_without_personal_data_is_unchanged() -> None:
    text = "How do I reset the printer after error E-42 (firmware 2.3.1)?"
    assert Masker().mask(text) == (text, [])
