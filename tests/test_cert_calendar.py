"""The certification calendar as plain arithmetic: month ends, leap years, windows, reminders
(R-CERT-3, R-CERT-5, R-CERT-6, R-CERT-8)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.certification import (
    CertificationView,
    Period,
    defense_until,
    plan_cycle,
    recertification_window_opens,
    valid_until,
)
from domain.policy import Policy


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("passed", "validity", "until"),
    [
        (at(2024, 1, 31), "P1M", at(2024, 2, 29)),  # leap year: end of February is the 29th
        (at(2023, 1, 31), "P1M", at(2023, 2, 28)),
        (at(2024, 1, 30), "P1M", at(2024, 2, 29)),
        (at(2024, 3, 31), "P1M", at(2024, 4, 30)),
        (at(2024, 2, 29), "P12M", at(2025, 2, 28)),  # no 29 Feb in 2025
        (at(2023, 2, 28), "P12M", at(2024, 2, 28)),  # not the leap day: same date, a year on
        (at(2023, 3, 1), "P12M", at(2024, 3, 1)),
        (at(2024, 12, 31), "P12M", at(2025, 12, 31)),
        (at(2024, 8, 31), "P6M", at(2025, 2, 28)),
        (at(2027, 11, 30), "P3M", at(2028, 2, 29)),
    ],
)
def test_r_cert_5_validity_is_in_calendar_months(
    passed: datetime, validity: str, until: datetime
) -> None:
    assert valid_until(passed, validity) == until


def test_r_cert_5_validity_keeps_the_time_of_day_and_zone() -> None:
    until = valid_until(at(2024, 5, 17, 9, 45), "P12M")
    assert until == at(2025, 5, 17, 9, 45) and until.tzinfo is UTC


@pytest.mark.parametrize(
    ("until", "window", "opens"),
    [
        (at(2025, 3, 1), "P60D", at(2024, 12, 31)),  # Feb 2025 has 28 days
        (at(2024, 3, 1), "P60D", at(2024, 1, 1)),  # Feb 2024 has 29
        (at(2025, 2, 28), "P60D", at(2024, 12, 30)),
        (at(2024, 3, 31), "P1M", at(2024, 2, 29)),  # a window in months ends at the month's end
        (at(2025, 3, 31), "P2M", at(2025, 1, 31)),
    ],
)
def test_r_cert_6_window_opens_before_expiry(until: datetime, window: str, opens: datetime) -> None:
    assert recertification_window_opens(until, window) == opens


def test_r_cert_6_default_policy_one_year_and_sixty_days() -> None:
    period, notices = plan_cycle(at(2024, 1, 31, 8), Policy())
    assert period == Period(passed_at=at(2024, 1, 31, 8), valid_until=at(2025, 1, 31, 8))
    assert [(n.kind, n.at, n.state) for n in notices] == [
        ("window_opens", at(2024, 12, 2, 8), "scheduled"),
        ("reminder", at(2025, 1, 1, 8), "scheduled"),  # 30 days before
        ("reminder", at(2025, 1, 24, 8), "scheduled"),  # 7 days before
        ("expiry", at(2025, 1, 31, 8), "scheduled"),
    ]


def test_r_cert_8_moments_already_past_at_the_pass_are_skipped() -> None:
    # a validity shorter than the window and the reminders: only the expiry is still ahead
    policy = Policy(cert_validity="P20D", recert_window="P60D", cert_reminders=["P30D", "P7D"])
    _, notices = plan_cycle(at(2024, 6, 1), policy)
    assert [(n.kind, n.state) for n in notices] == [
        ("window_opens", "skipped"),
        ("reminder", "skipped"),
        ("reminder", "scheduled"),
        ("expiry", "scheduled"),
    ]
    assert notices[2].at == at(2024, 6, 14)


def test_r_cert_8_reminders_come_in_order_whatever_the_setting() -> None:
    policy = Policy(cert_reminders=["P7D", "P90D", "P30D"])
    _, notices = plan_cycle(at(2024, 1, 1), policy)
    moments = [n.at for n in notices]
    assert moments == sorted(moments)
    assert [n.kind for n in notices] == [
        "reminder",  # 90 days before expiry comes before the window (60 days)
        "window_opens",
        "reminder",
        "reminder",
        "expiry",
    ]


def test_r_cert_8_reminders_are_configurable_and_checked() -> None:
    assert Policy().cert_reminders == ["P30D", "P7D"]
    with pytest.raises(ValueError):
        Policy(cert_reminders=["P0D"])
    with pytest.raises(ValueError):
        Policy(cert_reminders=["thirty days"])


def test_r_cert_3_defense_period_after_a_failure() -> None:
    assert defense_until(at(2024, 1, 31, 12), Policy().cert_defense_period) == at(2024, 3, 1, 12)
    assert defense_until(at(2024, 1, 31), "P1M") == at(2024, 2, 29)


def test_r_cert_7_certified_only_inside_a_validity_period() -> None:
    first = Period(passed_at=at(2024, 1, 31), valid_until=at(2025, 1, 31))
    second = Period(passed_at=at(2025, 3, 10), valid_until=at(2026, 3, 10))  # after a lapse
    view = CertificationView.model_validate(
        {
            "id": "cert-p-x-s",
            "partner_id": "p-x",
            "kind": "cloud_software",
            "subject": "s",
            "level": None,
            "status": "passed",
            "attempt": {
                "number": 2,
                "kind": "recertification",
                "submitted_by": "u",
                "submitted_at": at(2025, 3, 1),
                "evidence": [{"title": "e"}],
            },
            "periods": [first, second],
            "submitted_by": "u",
            "created_at": at(2024, 1, 1),
            "updated_at": at(2025, 3, 10),
        }
    )
    assert not view.certified_at(at(2024, 1, 30, 23, 59))
    assert view.certified_at(at(2024, 1, 31))  # from the pass itself
    assert view.certified_at(at(2025, 1, 30, 23, 59))
    assert not view.certified_at(at(2025, 1, 31))  # valid_until is exclusive
    assert not view.certified_at(at(2025, 3, 1))  # the lapse before the recertification
    assert view.certified_at(at(2025, 3, 10))
    assert not view.certified_at(at(2026, 3, 10))


def test_r_cert_8_policy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from config import Settings

    monkeypatch.setenv("PARTNERFLOW_POLICY__CERT_REMINDERS", '["P14D", "P1D"]')
    monkeypatch.setenv("PARTNERFLOW_POLICY__CERT_DEFENSE_PERIOD", "P10D")
    policy = Settings().policy
    assert policy.cert_reminders == ["P14D", "P1D"] and policy.cert_defense_period == "P10D"
