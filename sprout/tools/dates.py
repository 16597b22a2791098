"""Date arithmetic on ISO dates (YYYY-MM-DD): add days, difference in days, weekday."""

from __future__ import annotations

import datetime as dt

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _parse(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(s).strip())
    except ValueError:
        raise ValueError(f"dates are written YYYY-MM-DD, got {s!r}") from None


def date_calc(operation: str, date: str, days: int | None = None, other_date: str | None = None) -> str | int:
    """operation: add_days (date + days), days_between (other_date - date), weekday (of date)."""
    d = _parse(date)
    if operation == "add_days":
        if days is None:
            raise ValueError("add_days needs 'days'")
        return (d + dt.timedelta(days=int(days))).isoformat()
    if operation == "days_between":
        if other_date is None:
            raise ValueError("days_between needs 'other_date'")
        return (_parse(other_date) - d).days
    if operation == "weekday":
        return WEEKDAYS[d.weekday()]
    raise ValueError(f"unknown operation {operation!r}; use add_days, days_between or weekday")
