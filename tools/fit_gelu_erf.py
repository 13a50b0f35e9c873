"""Fits the rational approximation of erf(x / sqrt 2) that cnx's exact GELU uses.

erf(x / sqrt 2) ~= x P(x^2) / Q(x^2) on [0, X], P of degree 5 and Q of degree 5 with Q(0) = 1
(odd over even, so the fit holds on [-X, X]). The fit minimises the maximum absolute error:
linearised least squares (Sanathanan-Koerner: divide by the last Q) with Lawson's reweighting
towards the minimax. Prints the coefficients as f32 literals and the error of the f32
evaluation (Horner by fused multiply-adds, as the runtime and the JIT evaluate it) against
mpmath's erf.

    python tools/fit_gelu_erf.py            # needs numpy and mpmath
"""

import mpmath
import numpy as np

X = 5.2
DEG = 5
mpmath.mp.dps = 30


def erf_half(x):
    return np.array([float(mpmath.erf(mpmath.mpf(v) / mpmath.sqrt(2))) for v in x])


def design(x, f, q_prev):
    x2 = x * x
    cols = [x * x2**k for k in range(DEG + 1)]  # numerator: x^(2k+1)
    cols += [-f * x2**k for k in range(1, DEG + 1)]  # denominator: q_k x^(2k), q_0 = 1
    return np.stack(cols, axis=1) / q_prev[:, None]


def split(c):
    return c[: DEG + 1], np.concatenate([[1.0], c[DEG + 1 :]])


def evaluate(c, x):
    p, q = split(c)
    x2 = x * x
    return x * np.polyval(p[::-1], x2) / np.polyval(q[::-1], x2)


def fit():
    # Chebyshev-like nodes, denser towards X where the error of a rational fit grows.
    t = np.linspace(0.0, np.pi, 6000)
    x = X * (1 - np.cos(t)) / 2
    x = x[x > 1e-4]
    f = erf_half(x)
    w = np.ones_like(x)
    q_prev = np.ones_like(x)
    c = None
    for it in range(60):
        a = design(x, f, q_prev) * np.sqrt(w)[:, None]
        b = (f / q_prev) * np.sqrt(w)
        scale = np.abs(a).max(axis=0)
        sol, *_ = np.linalg.lstsq(a / scale, b, rcond=None)
        c = sol / scale
        _, q = split(c)
        q_prev = np.polyval(q[::-1], x * x)
        err = np.abs(evaluate(c, x) - f)
        if it >= 10:  # Lawson: weight the points where the error is large
            w = w * (err / err.max()) ** 0.5 + 1e-12
            w /= w.sum()
    return c


def f32(v):
    return np.float32(v)


def fma32(a, b, c):
    # a, b, c are f32; a * b is exact in f64, so one rounding (to f32) but for rare ties.
    return f32(np.float64(a) * np.float64(b) + np.float64(c))


def eval32(p32, q32, clamp, x):
    x = f32(min(max(x, -clamp), clamp))
    x2 = f32(x * x)
    p = p32[-1]
    for k in reversed(range(DEG)):
        p = fma32(p, x2, p32[k])
    p = f32(x * p)
    q = q32[-1]
    for k in reversed(range(DEG)):
        q = fma32(q, x2, q32[k])
    return f32(p / q)


def main():
    c = fit()
    p, q = split(c)
    p32 = [f32(v) for v in p]
    q32 = [f32(v) for v in q]
    xs = np.linspace(0.0, 6.0, 60001)
    # The clamp: the first f32 where the f32 rational reaches 1.
    clamp = f32(X)
    for v in xs:
        if eval32(p32, q32, f32(100.0), f32(v)) >= 1.0:
            clamp = f32(v)
            break
    print("numerator (x^1 .. x^11):", [f"{float(v):.10e}" for v in p32])
    print("denominator (x^0 .. x^10):", [f"{float(v):.10e}" for v in q32])
    print(f"clamp: {float(clamp):.10e}")
    worst_erf = worst_gelu = 0.0
    for v in np.linspace(-10.0, 10.0, 200001):
        v = float(f32(v))
        e = float(eval32(p32, q32, clamp, f32(v)))
        want = float(mpmath.erf(mpmath.mpf(v) / mpmath.sqrt(2)))
        worst_erf = max(worst_erf, abs(e - want))
        g = float(f32(f32(f32(0.5) * f32(v)) * f32(f32(e) + f32(1.0))))
        gw = float(0.5 * mpmath.mpf(v) * (1 + mpmath.erf(mpmath.mpf(v) / mpmath.sqrt(2))))
        worst_gelu = max(worst_gelu, abs(g - gw) / max(1.0, abs(v)))
    print(f"max |erf error| {worst_erf:.3e}; max |GELU error| / max(1, |x|) {worst_gelu:.3e}")


if __name__ == "__main__":
    main()
