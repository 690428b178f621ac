"""Numpy schedulers built from a diffusers scheduler config (the bundle's scheduler.json).

``make_scheduler(name, config)`` with name one of ``ddim``, ``euler``, ``dpmpp-2m``, ``lcm``.
Every scheduler has the same interface::

    sched.set_timesteps(steps)
    sched.timesteps            # np.ndarray (int64, or float32 for euler)
    sched.sigmas               # np.ndarray float32 (euler, dpmpp-2m), else None
    sched.init_noise_sigma     # float
    x_in = sched.scale_model_input(x, t)
    x = sched.step(model_output, t, x, generator_or_noise=None)   # the previous sample

The arithmetic follows diffusers 0.42 operation by operation in float32 (the noise schedule is
built exactly as torch builds it: float32 linspace, cumulative product accumulated in float64), so
timesteps and sigmas are bit-identical and a step agrees to float32 rounding.

Config keys are read the way ``SchedulerClass.from_config(config)`` reads them: keys the scheduler
does not know are ignored, missing keys take that scheduler's diffusers defaults (so a DDIM built
from an Euler config gets DDIM's ``clip_sample=True`` default, as in diffusers). Options that change
the numerics and are not implemented raise :class:`~md_export.core.errors.InputError` rather than being
silently ignored.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from md_export.core.errors import InputError, UnknownNameError

f32 = np.float32

_COMMON_DEFAULTS: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    trained_betas=None,
    prediction_type="epsilon",
    timestep_spacing="linspace",
    steps_offset=0,
    rescale_betas_zero_snr=False,
    thresholding=False,
)


# ---------------------------------------------------------------------------------------------------
# noise schedule


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32) bit for bit: float32 step, the first half counted
    up from `start`, the second half down from `end`."""
    if n == 1:
        return np.array([start], dtype=f32)
    a, b = f32(start), f32(end)
    step = f32((b - a) / f32(n - 1))
    i = np.arange(n)
    up = a + step * i.astype(f32)
    down = b - step * (n - 1 - i).astype(f32)
    return np.where(i < n // 2, up, down).astype(f32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """torch.cumprod on a float32 CPU tensor (accumulates in float64)."""
    return np.cumprod(x.astype(np.float64)).astype(f32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], dtype=f32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(f32(1.0) - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (f32(1.0) - alphas).astype(f32)


def make_betas(cfg: Mapping[str, Any]) -> np.ndarray:
    n = int(cfg["num_train_timesteps"])
    if cfg.get("trained_betas") is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=f32)
    elif cfg["beta_schedule"] == "linear":
        betas = _linspace_f32(cfg["beta_start"], cfg["beta_end"], n)
    elif cfg["beta_schedule"] == "scaled_linear":
        betas = _linspace_f32(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n) ** 2
    elif cfg["beta_schedule"] == "squaredcos_cap_v2":
        betas = _cosine_betas(n)
    else:
        raise InputError(
            f"scheduler: beta_schedule '{cfg['beta_schedule']}' is not supported (linear, scaled_linear, squaredcos_cap_v2)"
        )
    if cfg.get("rescale_betas_zero_snr"):
        betas = _rescale_zero_terminal_snr(betas)
    return betas.astype(f32)


# ---------------------------------------------------------------------------------------------------
# noise sources


def draw_noise(shape: tuple[int, ...], source: Any) -> np.ndarray:
    """Standard normal float32 noise of `shape` from `source`: an array (used as is), a
    ``torch.Generator`` (drawn as diffusers' ``randn_tensor`` draws on CPU), a
    ``numpy.random.Generator``, a callable ``shape -> array``, or None (fresh numpy generator)."""
    if isinstance(source, np.ndarray):
        if tuple(source.shape) != tuple(shape):
            raise InputError(f"scheduler: noise has shape {tuple(source.shape)}, expected {tuple(shape)}")
        return source.astype(f32, copy=False)
    if source is None:
        return np.random.default_rng().standard_normal(shape, dtype=f32)
    if isinstance(source, np.random.Generator):
        return source.standard_normal(shape, dtype=f32)
    if type(source).__name__ == "Generator" and type(source).__module__.startswith("torch"):
        import torch

        return torch.randn(tuple(shape), generator=source, dtype=torch.float32).numpy()
    if callable(source):
        return np.asarray(source(tuple(shape)), dtype=f32)
    raise InputError(f"scheduler: cannot draw noise from {type(source).__name__}")


# ---------------------------------------------------------------------------------------------------
# base


class Scheduler:
    """Common state and helpers. Subclasses set `name`, `defaults` and implement the rest."""

    name = ""
    defaults: dict[str, Any] = {}
    order = 1

    def __init__(self, config: Mapping[str, Any] | None = None, **overrides):
        cfg = dict(_COMMON_DEFAULTS)
        cfg.update(self.defaults)
        for key, value in {**(config or {}), **overrides}.items():
            if key in cfg:
                cfg[key] = value
        self.config = cfg
        if cfg.get("thresholding"):
            raise InputError(f"scheduler {self.name}: thresholding=true is not supported")
        if cfg["prediction_type"] not in ("epsilon", "v_prediction", "sample"):
            raise InputError(
                f"scheduler {self.name}: prediction_type '{cfg['prediction_type']}' is not supported (epsilon, v_prediction, sample)"
            )
        self.num_train_timesteps = int(cfg["num_train_timesteps"])
        self.betas = make_betas(cfg)
        self.alphas = (f32(1.0) - self.betas).astype(f32)
        self.alphas_cumprod = _cumprod_f32(self.alphas)
        self.num_inference_steps: int | None = None
        self.timesteps: np.ndarray = np.arange(self.num_train_timesteps)[::-1].copy()
        self.sigmas: np.ndarray | None = None
        self.init_noise_sigma: float = 1.0
        self._step_index: int | None = None

    # spacing shared by DDIM and Euler ("leading" adds steps_offset, "trailing" subtracts 1)
    def _spaced(self, n: int) -> np.ndarray:
        T, spacing = self.num_train_timesteps, self.config["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, T - 1, n).round()[::-1].copy()
        if spacing == "leading":
            ratio = T // n
            return (np.arange(0, n) * ratio).round()[::-1].copy() + self.config["steps_offset"]
        if spacing == "trailing":
            return np.round(np.arange(T, 0, -T / n)) - 1
        raise InputError(f"scheduler {self.name}: timestep_spacing '{spacing}' is not supported (leading, trailing, linspace)")

    def _check_steps(self, steps: int) -> int:
        steps = int(steps)
        if steps < 1:
            raise InputError(f"scheduler {self.name}: steps must be at least 1, got {steps}")
        if steps > self.num_train_timesteps:
            raise InputError(f"scheduler {self.name}: steps ({steps}) cannot exceed num_train_timesteps ({self.num_train_timesteps})")
        return steps

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def _index_of(self, t) -> int:
        """The step a timestep belongs to, as diffusers finds it on the first call (the second match
        when a timestep occurs twice), then counted up by `step`."""
        if self._step_index is None:
            matches = np.nonzero(self.timesteps == np.asarray(t).astype(self.timesteps.dtype))[0]
            if len(matches) == 0:
                raise InputError(f"scheduler {self.name}: timestep {t!r} is not in the schedule")
            self._step_index = int(matches[1] if len(matches) > 1 else matches[0])
        return self._step_index

    def scale_model_input(self, sample: np.ndarray, t) -> np.ndarray:
        return sample

    def set_timesteps(self, steps: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, model_output: np.ndarray, t, sample: np.ndarray, generator_or_noise: Any = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _x0_from(self, model_output, sample, alpha_prod_t, beta_prod_t):
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            return (sample - beta_prod_t ** f32(0.5) * model_output) / alpha_prod_t ** f32(0.5)
        if kind == "v_prediction":
            return alpha_prod_t ** f32(0.5) * sample - beta_prod_t ** f32(0.5) * model_output
        return model_output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.num_inference_steps}, prediction_type={self.config['prediction_type']!r})"


def _as_f32(x) -> np.ndarray:
    return np.asarray(x, dtype=f32)


# ---------------------------------------------------------------------------------------------------
# DDIM (eta = 0, as the pipelines run it)


class DDIM(Scheduler):
    name = "ddim"
    defaults = dict(clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True, timestep_spacing="leading")

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = f32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def set_timesteps(self, steps: int) -> None:
        steps = self._check_steps(steps)
        self.num_inference_steps = steps
        self.timesteps = self._spaced(steps).astype(np.int64)
        self._step_index = None

    def step(self, model_output, t, sample, generator_or_noise=None):
        model_output, sample = _as_f32(model_output), _as_f32(sample)
        t = int(t)
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = f32(1.0) - a_t
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            x0 = (sample - b_t ** f32(0.5) * model_output) / a_t ** f32(0.5)
            eps = model_output
        elif kind == "v_prediction":
            x0 = a_t ** f32(0.5) * sample - b_t ** f32(0.5) * model_output
            eps = a_t ** f32(0.5) * model_output + b_t ** f32(0.5) * sample
        else:
            x0 = model_output
            eps = (sample - a_t ** f32(0.5) * x0) / b_t ** f32(0.5)
        if self.config["clip_sample"]:
            r = f32(self.config["clip_sample_range"])
            x0 = np.clip(x0, -r, r)
        direction = (f32(1.0) - a_prev) ** f32(0.5) * eps
        return (a_prev ** f32(0.5) * x0 + direction).astype(f32)


# ---------------------------------------------------------------------------------------------------
# sigma helpers shared by Euler and DPM-Solver++


def _karras(sigmas_low_to_high: np.ndarray, n: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    lo = float(sigma_min) if sigma_min is not None else float(sigmas_low_to_high[0])
    hi = float(sigma_max) if sigma_max is not None else float(sigmas_low_to_high[-1])
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep whose sigma is `sigma` (linear in log sigma)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo_v, hi_v = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo_v - log_sigma) / (lo_v - hi_v), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(np.shape(sigma))


class _SigmaScheduler(Scheduler):
    def _train_sigmas(self) -> np.ndarray:
        ac = self.alphas_cumprod.copy()
        if self.config.get("rescale_betas_zero_snr"):
            ac[-1] = f32(2.0**-24)
        self._ac = ac
        return (((f32(1.0) - ac) / ac) ** f32(0.5)).astype(f32)

    def _final_sigma(self):
        kind = self.config["final_sigmas_type"]
        if kind == "zero":
            return 0.0
        if kind == "sigma_min":
            return ((f32(1.0) - self._ac[0]) / self._ac[0]) ** f32(0.5)
        raise InputError(f"scheduler {self.name}: final_sigmas_type '{kind}' is not supported (zero, sigma_min)")

    def _check_sigma_options(self, allowed_flags: tuple[str, ...] = ("use_karras_sigmas",)) -> None:
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"):
            if self.config.get(flag) and flag not in allowed_flags:
                raise InputError(f"scheduler {self.name}: {flag}=true is not supported")


# ---------------------------------------------------------------------------------------------------
# Euler (EulerDiscreteScheduler, s_churn = 0)


class Euler(_SigmaScheduler):
    name = "euler"
    defaults = dict(
        interpolation_type="linear",
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        sigma_min=None,
        sigma_max=None,
        timestep_type="discrete",
        final_sigmas_type="zero",
    )

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self._check_sigma_options()
        if self.config["interpolation_type"] != "linear":
            raise InputError(f"scheduler euler: interpolation_type '{self.config['interpolation_type']}' is not supported (linear)")
        self._full_sigmas = self._train_sigmas()
        self.sigmas = np.concatenate([self._full_sigmas[::-1], [f32(0.0)]]).astype(f32)
        self.init_noise_sigma = self._noise_sigma()

    def _continuous(self) -> bool:
        return self.config["timestep_type"] == "continuous" and self.config["prediction_type"] == "v_prediction"

    def _noise_sigma(self) -> float:
        top = self.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(top)
        return float((top**2 + f32(1.0)) ** f32(0.5))

    def set_timesteps(self, steps: int) -> None:
        steps = self._check_steps(steps)
        self.num_inference_steps = steps
        T = self.num_train_timesteps
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            timesteps = np.linspace(0, T - 1, steps, dtype=f32)[::-1].copy()
        else:
            timesteps = self._spaced(steps).astype(f32)
        full = self._full_sigmas
        sigmas = np.interp(timesteps, np.arange(0, len(full)), full)
        if self.config["use_karras_sigmas"]:
            # diffusers' Euler takes the ends of the Karras ramp from the interpolated schedule
            log_sigmas = np.log(full)
            sigmas = _karras(sigmas[::-1], steps, self.config["sigma_min"], self.config["sigma_max"])
            timesteps = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
        sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(f32)
        self.sigmas = sigmas
        if self._continuous():
            self.timesteps = (f32(0.25) * np.log(sigmas[:-1])).astype(f32)
        else:
            self.timesteps = timesteps.astype(f32)
        self.init_noise_sigma = self._noise_sigma()
        self._step_index = None

    def scale_model_input(self, sample, t):
        sigma = self.sigmas[self._index_of(t)]
        return (_as_f32(sample) / ((sigma**2 + f32(1.0)) ** f32(0.5))).astype(f32)

    def step(self, model_output, t, sample, generator_or_noise=None):
        model_output, sample = _as_f32(model_output), _as_f32(sample)
        i = self._index_of(t)
        sigma = self.sigmas[i]
        sigma_hat = sigma * f32(1.0)
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            x0 = sample - sigma_hat * model_output
        elif kind == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + f32(1.0)) ** f32(0.5)) + (sample / (sigma**2 + f32(1.0)))
        else:
            x0 = model_output
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        self._step_index = i + 1
        return (sample + derivative * dt).astype(f32)


# ---------------------------------------------------------------------------------------------------
# DPM-Solver++ 2M (DPMSolverMultistepScheduler, algorithm_type dpmsolver++, solver_order 2)


class DPMPP2M(_SigmaScheduler):
    name = "dpmpp-2m"
    defaults = dict(
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        euler_at_final=False,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        use_lu_lambdas=False,
        use_flow_sigmas=False,
        sigma_min=None,
        sigma_max=None,
        final_sigmas_type="zero",
        lambda_min_clipped=-float("inf"),
        variance_type=None,
    )

    def __init__(self, config=None, **overrides):
        # the name fixes the algorithm: DPM-Solver++, multistep, second order
        overrides = {"algorithm_type": "dpmsolver++", "solver_order": 2, **overrides}
        super().__init__(config, **overrides)
        self._check_sigma_options()
        if self.config["solver_type"] not in ("midpoint", "heun"):
            raise InputError(f"scheduler dpmpp-2m: solver_type '{self.config['solver_type']}' is not supported (midpoint, heun)")
        if self.config["variance_type"] in ("learned", "learned_range"):
            raise InputError("scheduler dpmpp-2m: learned variance is not supported")
        full = self._train_sigmas()
        self._full_sigmas = full
        alpha_t = np.sqrt(self._ac)
        sigma_t = np.sqrt(f32(1.0) - self._ac)
        self._lambda_t = (np.log(alpha_t) - np.log(sigma_t)).astype(f32)
        self.sigmas = full.copy()
        self.init_noise_sigma = 1.0
        self._outputs: list[np.ndarray | None] = [None, None]
        self._lower_order_nums = 0

    def set_timesteps(self, steps: int) -> None:
        steps = self._check_steps(steps)
        T = self.num_train_timesteps
        clipped = int(np.searchsorted(self._lambda_t[::-1], f32(self.config["lambda_min_clipped"])))
        last = T - clipped
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            timesteps = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = last // (steps + 1)
            timesteps = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            timesteps += self.config["steps_offset"]
        elif spacing == "trailing":
            timesteps = np.arange(last, 0, -T / steps).round().astype(np.int64) - 1
        else:
            raise InputError(f"scheduler dpmpp-2m: timestep_spacing '{spacing}' is not supported (leading, trailing, linspace)")
        full = self._full_sigmas
        if self.config["use_karras_sigmas"]:
            # DPM-Solver takes the ends of the Karras ramp from the whole training schedule
            log_sigmas = np.log(full)
            sigmas = _karras(full, steps, self.config["sigma_min"], self.config["sigma_max"])
            timesteps = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
            if self.config["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(full)), full)
        self.sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(f32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._outputs = [None, None]
        self._lower_order_nums = 0
        self._step_index = None

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = f32(1.0) / ((sigma**2 + f32(1.0)) ** f32(0.5))
        return alpha, sigma * alpha

    def step(self, model_output, t, sample, generator_or_noise=None):
        model_output, sample = _as_f32(model_output), _as_f32(sample)
        i = self._index_of(t)
        n = len(self.timesteps)
        cfg = self.config
        lower_final = i == n - 1 and (
            cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15) or cfg["final_sigmas_type"] == "zero"
        )
        # data prediction x0 from the model output
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        kind = cfg["prediction_type"]
        if kind == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        elif kind == "v_prediction":
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        else:
            x0 = model_output
        self._outputs = [self._outputs[1], x0.astype(f32)]

        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
            lambda_t = np.log(alpha_t) - np.log(sigma_t)
            lambda_s0 = np.log(alpha_s0) - np.log(sigma_s0)
            h = lambda_t - lambda_s0
            if self._lower_order_nums < 1 or lower_final:
                prev = (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - f32(1.0))) * x0
            else:
                alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
                lambda_s1 = np.log(alpha_s1) - np.log(sigma_s1)
                m0, m1 = self._outputs[1], self._outputs[0]
                r0 = (lambda_s0 - lambda_s1) / h
                d0, d1 = m0, (f32(1.0) / r0) * (m0 - m1)
                if cfg["solver_type"] == "midpoint":
                    prev = (
                        (sigma_t / sigma_s0) * sample
                        - (alpha_t * (np.exp(-h) - f32(1.0))) * d0
                        - f32(0.5) * (alpha_t * (np.exp(-h) - f32(1.0))) * d1
                    )
                else:
                    prev = (
                        (sigma_t / sigma_s0) * sample
                        - (alpha_t * (np.exp(-h) - f32(1.0))) * d0
                        + (alpha_t * ((np.exp(-h) - f32(1.0)) / h + f32(1.0))) * d1
                    )
        if self._lower_order_nums < 2:
            self._lower_order_nums += 1
        self._step_index = i + 1
        return prev.astype(f32)


# ---------------------------------------------------------------------------------------------------
# LCM


class LCM(Scheduler):
    name = "lcm"
    defaults = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        original_inference_steps=50,
        clip_sample=False,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        timestep_scaling=10.0,
    )

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.final_alpha_cumprod = f32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.denoised: np.ndarray | None = None

    def set_timesteps(self, steps: int, original_inference_steps: int | None = None) -> None:
        steps = self._check_steps(steps)
        original = int(original_inference_steps or self.config["original_inference_steps"])
        T = self.num_train_timesteps
        if original > T:
            raise InputError(f"scheduler lcm: original_inference_steps ({original}) cannot exceed num_train_timesteps ({T})")
        if steps > original:
            raise InputError(f"scheduler lcm: steps ({steps}) cannot exceed original_inference_steps ({original})")
        k = T // original
        origin = (np.arange(1, original + 1) * k - 1)[::-1].copy()
        idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.int64)
        self.num_inference_steps = steps
        self._step_index = None

    def step(self, model_output, t, sample, generator_or_noise=None):
        model_output, sample = _as_f32(model_output), _as_f32(sample)
        i = self._index_of(t)
        t = int(t)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = f32(1.0) - a_t, f32(1.0) - a_prev
        # boundary-condition scalings (sigma_data = 0.5)
        st = f32(t) * f32(self.config["timestep_scaling"])
        c_skip = f32(0.25) / (st**2 + f32(0.25))
        c_out = st / (st**2 + f32(0.25)) ** f32(0.5)
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        elif kind == "v_prediction":
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
        else:
            x0 = model_output
        if self.config["clip_sample"]:
            r = f32(self.config["clip_sample_range"])
            x0 = np.clip(x0, -r, r)
        denoised = (c_out * x0 + c_skip * sample).astype(f32)
        self.denoised = denoised
        self._step_index = i + 1
        if i != self.num_inference_steps - 1:
            noise = draw_noise(model_output.shape, generator_or_noise)
            return (np.sqrt(a_prev) * denoised + np.sqrt(b_prev) * noise).astype(f32)
        return denoised


# ---------------------------------------------------------------------------------------------------

SCHEDULERS: dict[str, type[Scheduler]] = {"ddim": DDIM, "euler": Euler, "dpmpp-2m": DPMPP2M, "lcm": LCM}


def make_scheduler(name: str, config: Mapping[str, Any] | None = None, **overrides) -> Scheduler:
    """Build scheduler `name` (ddim, euler, dpmpp-2m, lcm) from a diffusers scheduler config dict."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise UnknownNameError("scheduler", name, SCHEDULERS) from None
    return cls(config, **overrides)


__all__ = ["DDIM", "DPMPP2M", "Euler", "LCM", "SCHEDULERS", "Scheduler", "draw_noise", "make_betas", "make_scheduler"]
