"""Variant runs of the quality harnesses: `--variant neighbors=0,dropout=0.1` becomes Client.train
keyword arguments, so every variant tried is run by the same harness as the default (which passes
none and gets the server's defaults)."""


def variant_args(text):
    """'neighbors=0,dropout=0.1,hold_out=random,layers=64/32' -> {"neighbors": 0, "dropout": 0.1,
    "hold_out": "random", "layers": (64, 32)} (a '/'-separated value is a tuple of ints)."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, value = item.split("=")
        if "/" in value:
            out[key] = tuple(int(v) for v in value.split("/"))
            continue
        try:
            out[key] = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            out[key] = value  # e.g. hold_out=random
    return out
