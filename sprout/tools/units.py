"""Unit conversion over small tables (length, mass, volume, time, speed, data) plus temperature."""

from __future__ import annotations

# factor to the base unit of each dimension
_UNITS: dict[str, tuple[str, float]] = {}
_TABLES: dict[str, dict[str, float]] = {
    "length": {
        "m": 1,
        "km": 1000,
        "cm": 0.01,
        "mm": 0.001,
        "mile": 1609.344,
        "yard": 0.9144,
        "foot": 0.3048,
        "inch": 0.0254,
    },
    "mass": {"kg": 1, "g": 0.001, "mg": 1e-6, "t": 1000, "lb": 0.45359237, "oz": 0.028349523125},
    "volume": {"l": 1, "ml": 0.001, "m3": 1000, "gallon": 3.785411784, "cup": 0.2365882365},
    "time": {"s": 1, "min": 60, "h": 3600, "day": 86400, "week": 604800},
    "speed": {"m/s": 1, "km/h": 1 / 3.6, "mph": 0.44704},
    "data": {"b": 1, "kb": 1000, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3},
}
for dim, table in _TABLES.items():
    for unit, f in table.items():
        _UNITS[unit] = (dim, float(f))
_ALIASES = {
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "kilometer": "km",
    "kilometers": "km",
    "centimeter": "cm",
    "centimeters": "cm",
    "millimeter": "mm",
    "miles": "mile",
    "yards": "yard",
    "feet": "foot",
    "ft": "foot",
    "inches": "inch",
    "in": "inch",
    "kilogram": "kg",
    "kilograms": "kg",
    "gram": "g",
    "grams": "g",
    "ton": "t",
    "tonne": "t",
    "pound": "lb",
    "pounds": "lb",
    "lbs": "lb",
    "ounce": "oz",
    "ounces": "oz",
    "liter": "l",
    "liters": "l",
    "litre": "l",
    "milliliter": "ml",
    "gallons": "gallon",
    "cups": "cup",
    "second": "s",
    "seconds": "s",
    "minute": "min",
    "minutes": "min",
    "hour": "h",
    "hours": "h",
    "days": "day",
    "weeks": "week",
    "kph": "km/h",
    "米": "m",
    "千米": "km",
    "公里": "km",
    "厘米": "cm",
    "毫米": "mm",
    "英里": "mile",
    "千克": "kg",
    "公斤": "kg",
    "克": "g",
    "磅": "lb",
    "升": "l",
    "毫升": "ml",
    "秒": "s",
    "分钟": "min",
    "小时": "h",
    "天": "day",
    "c": "celsius",
    "°c": "celsius",
    "f": "fahrenheit",
    "°f": "fahrenheit",
    "k": "kelvin",
    "摄氏度": "celsius",
    "华氏度": "fahrenheit",
}
_TEMPS = ("celsius", "fahrenheit", "kelvin")


def _norm(unit: str) -> str:
    u = unit.strip().lower()
    return _ALIASES.get(u, _ALIASES.get(unit.strip(), u))


def _to_celsius(v: float, u: str) -> float:
    return v if u == "celsius" else (v - 32) * 5 / 9 if u == "fahrenheit" else v - 273.15


def _from_celsius(c: float, u: str) -> float:
    return c if u == "celsius" else c * 9 / 5 + 32 if u == "fahrenheit" else c + 273.15


def convert(value: float, from_unit: str, to_unit: str) -> float:
    a, b = _norm(from_unit), _norm(to_unit)
    value = float(value)
    if a in _TEMPS or b in _TEMPS:
        if not (a in _TEMPS and b in _TEMPS):
            raise ValueError(f"cannot convert {from_unit} to {to_unit}")
        out = _from_celsius(_to_celsius(value, a), b)
    else:
        if a not in _UNITS or b not in _UNITS:
            raise ValueError(f"unknown unit {from_unit if a not in _UNITS else to_unit!r}")
        if _UNITS[a][0] != _UNITS[b][0]:
            raise ValueError(f"cannot convert {_UNITS[a][0]} ({from_unit}) to {_UNITS[b][0]} ({to_unit})")
        out = value * _UNITS[a][1] / _UNITS[b][1]
    return round(out, 6)


def known_units() -> list[str]:
    return sorted(_UNITS) + list(_TEMPS)
