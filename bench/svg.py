"""Hand-drawn SVG line/point charts for bench/render.py: axes, ticks (linear or log), series, legend."""

import math

COLORS = ["#1f6feb", "#d1242f", "#2da44e", "#bf8700", "#8250df", "#57606a"]
W, H, L, R, T, B = 720, 400, 70, 170, 40, 50


def _ticks(lo, hi, log):
    if log:
        out, e = [], math.floor(math.log10(lo))
        while 10 ** e <= hi * 1.0001:
            for m in (1, 2, 5):
                v = m * 10 ** e
                if lo <= v <= hi * 1.0001:
                    out.append(v)
            e += 1
        return out
    step = 10 ** math.floor(math.log10((hi - lo) / 5 or 1))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 7:
            step *= m
            break
    v, out = math.ceil(lo / step) * step, []
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v):
    if v >= 1000:
        return "%gk" % (v / 1000)
    return "%g" % float("%.3g" % v)


class Axis:
    def __init__(self, lo, hi, log, a, b):
        if log:
            lo, hi = max(lo, 1e-9), max(hi, lo * 10)
        elif hi <= lo:
            hi = lo + 1
        self.lo, self.hi, self.log, self.a, self.b = lo, hi, log, a, b

    def __call__(self, v):
        f = (lambda x: math.log10(max(x, 1e-9))) if self.log else (lambda x: x)
        return self.a + (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo)) * (self.b - self.a)


def _bounds(series, i, log, zero):
    vals = [p[i] for s in series for p in s["points"] if p[i] is not None and (not log or p[i] > 0)]
    if not vals:
        return 1, 10
    lo, hi = min(vals), max(vals)
    if log:
        return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    return (0 if zero else lo), hi * 1.05


def chart(title, xlabel, ylabel, series, logx=False, logy=False, hlines=()):
    """series: [{"name", "points": [(x, y)], "mode": "line"|"points"}]; hlines: [(y, label)]."""
    x0, x1 = _bounds(series, 0, logx, False)
    y0, y1 = _bounds(series, 1, logy, True)
    y1 = max([y1] + [h[0] * 1.1 for h in hlines])
    X, Y = Axis(x0, x1, logx, L, W - R), Axis(y0, y1, logy, H - B, T)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="11"><rect width="100%%" height="100%%" fill="white"/>' % (W, H),
         '<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>' % (L, title)]
    o += _grid(X, Y)
    o.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % ((L + W - R) / 2, H - 12, xlabel))
    o.append('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>' % ((T + H - B) / 2, ylabel))
    for y, label in hlines:
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#888" stroke-dasharray="5,4"/>'
                 '<text x="%d" y="%.1f" fill="#555">%s</text>' % (L, W - R, Y(y), Y(y), W - R + 4, Y(y) + 4, label))
    for k, s in enumerate(series):
        o += _series(s, COLORS[k % len(COLORS)], X, Y, k)
    o.append("</svg>")
    return "\n".join(o)


def _grid(X, Y):
    o = ['<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (L, T, W - R - L, H - B - T)]
    for v in _ticks(X.lo, X.hi, X.log):
        x = X(v)
        o.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" '
                 'text-anchor="middle">%s</text>' % (x, x, T, H - B, x, H - B + 15, _fmt(v)))
    for v in _ticks(Y.lo, Y.hi, Y.log):
        y = Y(v)
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" '
                 'text-anchor="end">%s</text>' % (L, W - R, y, y, L - 5, y + 4, _fmt(v)))
    return o


def _series(s, color, X, Y, k):
    pts = [(X(x), Y(y)) for x, y in s["points"] if x is not None and y is not None]
    o = []
    if s.get("mode", "line") == "line" and len(pts) > 1:
        o.append('<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>' %
                 (color, " ".join("%.1f,%.1f" % p for p in pts)))
    else:
        o += ['<circle cx="%.1f" cy="%.1f" r="%s" fill="%s"/>' % (x, y, s.get("r", 2), color) for x, y in pts]
    ly = T + 10 + 18 * k
    o.append('<rect x="%d" y="%d" width="12" height="4" fill="%s"/><text x="%d" y="%d">%s</text>' %
             (W - R + 8, ly - 4, color, W - R + 24, ly + 1, s["name"]))
    return o


def cdf(values, most=400):
    """Empirical CDF points, thinned to at most `most` (always keeping the last, the maximum)."""
    v = sorted(x for x in values if x is not None)
    step = max(1, len(v) // most)
    keep = [i for i in range(len(v)) if i % step == 0 or i == len(v) - 1]
    return [(v[i], 100.0 * (i + 1) / len(v)) for i in keep]
