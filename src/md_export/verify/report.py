"""The parity report: one object, saved as parity.json and parity.md in the bundle and summarised
in manifest.json. Falling short is an exit code, never a warning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

REPORT_SCHEMA_VERSION = 1
PASS, FAIL, NOT_RUN = "pass", "fail", "not-run"


@dataclass
class Check:
    model: str  # text_encoder | unet | vae_decoder | vae_encoder | end_to_end
    output: str
    runtime: str  # ai-edge-litert | onnxruntime | milrun | coreml | pipeline
    precision: str
    status: str
    threshold_psnr: float
    metrics: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    reason: str = ""

    def to_json(self) -> dict:
        d = {
            "model": self.model, "output": self.output, "runtime": self.runtime, "precision": self.precision,
            "status": self.status, "threshold": {"psnr": self.threshold_psnr}, "samples": self.samples,
            **{k: _finite(v) for k, v in self.metrics.items()},
        }
        if self.reason:
            d["reason"] = self.reason
        return d


def _finite(v):
    """JSON has no inf or NaN: write them as strings a reader can spot."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


@dataclass
class ParityReport:
    bundle: Path
    target: str
    samples: int
    seed: int
    reference: dict
    checks: list[Check] = field(default_factory=list)
    allow_skip: bool = False
    artifacts: dict = field(default_factory=dict)  # extra files written (side-by-side PNG ...)
    # the model files against the manifest's sha256 and bytes: pass | fail (with "files") | skipped (--no-verify)
    integrity: dict = field(default_factory=lambda: {"status": NOT_RUN})

    @property
    def status(self) -> str:
        states = {c.status for c in self.checks}
        if FAIL in states or self.integrity.get("status") == FAIL:
            return FAIL
        if NOT_RUN in states or not self.checks:
            return NOT_RUN
        return PASS

    def exit_code(self) -> int:
        s = self.status
        if s == PASS or (s == NOT_RUN and self.allow_skip and self.checks):
            return 0
        return 1

    def to_json(self) -> dict:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "bundle": Path(self.bundle).name,  # no absolute path goes into a bundle
            "target": self.target,
            "status": self.status,
            "samples": self.samples,
            "seed": self.seed,
            "reference": self.reference,
            "integrity": self.integrity,
            "checks": [c.to_json() for c in self.checks],
            **({"artifacts": self.artifacts} if self.artifacts else {}),
        }

    def summary(self) -> dict:
        psnr = {f"{c.model}@{c.runtime}": _finite(round(c.metrics["psnr"], 2)) for c in self.checks if "psnr" in c.metrics}
        return {"bundle": Path(self.bundle).name, "target": self.target, "status": self.status, "report": "parity.json",
                "integrity": self.integrity["status"], "psnr": psnr, "not_run": [c.model for c in self.checks if c.status == NOT_RUN]}

    def markdown(self) -> str:
        lines = [
            f"# Parity: {self.target} bundle `{self.bundle}`",
            "",
            f"Status: **{self.status}** ({self.samples} samples, seed {self.seed}; reference: {self.reference.get('name')})",
            "",
            f"Integrity (model files against the manifest's sha256 and bytes): **{self.integrity['status']}**"
            + "".join(f"\n- {p}" for p in self.integrity.get("files", [])),
            "",
            "| model | output | runtime | precision | PSNR (dB) | floor | cosine | max abs | mean abs | status |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            m = c.metrics
            cell = lambda k, fmt, m=m: (fmt.format(m[k]) if k in m and math.isfinite(m[k]) else str(m.get(k, "-")))
            lines.append(
                f"| {c.model} | {c.output} | {c.runtime} | {c.precision} | {cell('psnr', '{:.2f}')} | {c.threshold_psnr:g} | "
                f"{cell('cosine', '{:.6f}')} | {cell('max_abs', '{:.3g}')} | {cell('mean_abs', '{:.3g}')} | "
                f"{c.status}{' (' + c.reason + ')' if c.reason else ''} |"
            )
        for name, path in self.artifacts.items():
            lines += ["", f"{name}: `{path}`"]
        return "\n".join(lines) + "\n"

    def table(self):
        from rich.table import Table

        integrity = self.integrity["status"] + (f" ({'; '.join(self.integrity['files'])})" if self.integrity.get("files") else "")
        t = Table(title=f"parity {self.target} {self.bundle}: {self.status}", caption=f"integrity: {integrity}")
        for col in ("model", "runtime", "precision", "PSNR dB", "floor", "cosine", "max abs", "status"):
            t.add_column(col)
        colors = {PASS: "green", FAIL: "red", NOT_RUN: "yellow"}
        for c in self.checks:
            m = c.metrics
            t.add_row(
                c.model, c.runtime, c.precision,
                f"{m['psnr']:.2f}" if "psnr" in m else "-", f"{c.threshold_psnr:g}",
                f"{m['cosine']:.6f}" if "cosine" in m else "-", f"{m['max_abs']:.3g}" if "max_abs" in m else "-",
                f"[{colors[c.status]}]{c.status}[/]" + (f" {c.reason}" if c.reason and c.status != PASS else ""),
            )
        return t
