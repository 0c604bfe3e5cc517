"""A report's plots (DET curves, unlinkability, speed) as PNG files, drawn with matplotlib's Agg backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def write_det_png(report: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Plot the DET curves (one panel per profile) to a PNG with matplotlib's Agg backend.

    Returns False, writing nothing, when matplotlib is not installed.
    """
    results = report["profiles"]
    figure = _new_figure(len(results), (5.6, 4.8))
    if figure is None:
        return False
    for panel, result in enumerate(results.values(), start=1):
        _det_panel(figure.add_subplot(1, len(results), panel), result)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return True


#: Lines of the speed plot: (point key, label, marker, line style, colour); one colour per scheme.
_SPEED_LINES = {
    "identify": (
        ("plain_ms", "plain IndexFlatIP (faiss)", "o", "-", "C0"),
        ("hash_identify_ms", "hash, exact flat (incl. probe hashing)", "s", "-", "C1"),
        ("hash_ivf_ms", "hash, IVF (search only)", "^", "-", "C2"),
        ("he_identify_ms", "he, packed CKKS 1:N", "D", "--", "C3"),
        ("hybrid_identify_ms", "hybrid, shortlist + CKKS re-score", "v", "--", "C4"),
    ),
    "verify": (
        ("plain_verify_ms", "plain, one inner product", "o", "-", "C0"),
        ("hash_verify_ms", "hash, probe hashing + Hamming", "s", "-", "C1"),
        ("he_verify_ms", "he, CKKS score + decision", "D", "--", "C3"),
        ("hybrid_verify_ms", "hybrid, CKKS score + decision", "v", "--", "C4"),
    ),
    "enrol": (
        ("plain_enrol_per_s", "plain IndexFlatIP add", "o", "-", "C0"),
        ("hash_enrol_per_s", "hash, hashing + flat add", "s", "-", "C1"),
        ("he_enrol_per_s", "he, CKKS encryption", "D", "--", "C3"),
        ("hybrid_enrol_per_s", "hybrid, hashing + CKKS encryption", "v", "--", "C4"),
    ),
}


def write_speed_png(speed: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Log-log identify latency, verify latency and enrolment rate against gallery size.

    One column per profile (``speed``: profile -> :func:`speed_vs_gallery_size`
    result), one row per measure. Returns False, writing nothing, when matplotlib
    is not installed.
    """
    columns = max(1, len(speed))
    figure = _new_figure(columns, (6.0, 13.5))
    if figure is None:
        return False
    axis_labels = {
        "identify": "identify: ms per query (one thread)",
        "verify": "verify: ms per claim (one thread)",
        "enrol": "enrolment: templates/s (one thread)",
    }
    for column, (profile, result) in enumerate(speed.items()):
        for row, (measure, lines) in enumerate(_SPEED_LINES.items()):
            axes = figure.add_subplot(3, columns, row * columns + column + 1)
            for key, label, marker, style, colour in lines:
                shown = [
                    (p["n"], p[key] if measure == "enrol" else p[key]["mean"]) for p in result["points"] if key in p
                ]
                if shown:
                    sizes, values = zip(*shown)
                    axes.plot(sizes, values, marker=marker, linestyle=style, color=colour, label=label, linewidth=1.6)
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.set_xlabel("enrolled templates")
            axes.set_ylabel(axis_labels[measure])
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(loc="best", fontsize=7)
            if row == 0:
                cap = result.get("encrypted", {}).get("max_n")
                title = f"'{profile}' synthetic faces ({result['dim']}-D, {result['bits']}-bit codes)"
                axes.set_title(title + (f"\nhe / hybrid up to {cap:,}" if cap else ""), fontsize=10)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return True


def write_unlinkability_png(unlinkable: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Mated and non-mated cross-key score densities with D<->(s), one panel per profile.

    ``unlinkable`` maps a profile to its ``d_sys`` result. Returns False, writing
    nothing, when matplotlib is not installed.
    """
    figure = _new_figure(len(unlinkable), (5.4, 4.6))
    if figure is None:
        return False
    for panel, (profile, result) in enumerate(unlinkable.items(), start=1):
        axes = figure.add_subplot(1, len(unlinkable), panel)
        curve = result["curve"]
        edges = np.asarray(curve["edges"], dtype=np.float64)
        widths = np.diff(edges)
        inside = widths > 0
        highest = 0.0
        for key, label in (("p_mated", "mated (same person, keys A and B)"), ("p_nonmated", "non-mated")):
            density = np.zeros_like(widths)
            density[inside] = np.asarray(curve[key])[inside] / widths[inside]
            axes.stairs(density, edges, label=label, linewidth=1.6)
            highest = max(highest, float(density.max()))
        axes.set_ylim(0, 1.4 * highest if highest > 0 else 1.0)
        axes.set_xlabel("linkage score, cos(pi h / bits)")
        axes.set_ylabel("density")
        twin = axes.twinx()
        twin.stairs(np.asarray(curve["local"]), edges, color="black", linestyle=":", label="D<->(s)")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("local linkability D<->(s)")
        axes.set_title(f"'{profile}': D_sys = {result['value']:.3f} (floor {result['sampling_floor']:.3f})")
        handles, labels = axes.get_legend_handles_labels()
        extra_handles, extra_labels = twin.get_legend_handles_labels()
        axes.legend(handles + extra_handles, labels + extra_labels, loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return True


def _new_figure(panels: int, size: tuple[float, float]) -> Any:
    """A matplotlib Agg figure with room for ``panels`` side by side, or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(size[0] * max(1, panels), size[1]), dpi=110)
    FigureCanvasAgg(figure)
    return figure


#: DET line styles per scheme: he follows plain within 1e-4, so it is dashed over it.
_DET_STYLES = {"plain": ("-", 2.4), "hash": ("-", 1.8), "he": ("--", 1.6), "hybrid": (":", 2.0)}


def _det_panel(axes: Any, result: dict[str, Any]) -> None:
    params = result["parameters"]
    fmr_floor = 1.0 / max(1, params["impostor_pairs"])
    fnmr_floor = 0.5 / max(1, params["genuine_pairs"])
    labels = {"plain": "plain cosine (unprotected)", "hash": f"hash scheme ({params['bits']} bits)"}
    encrypted = params.get("encrypted")
    if encrypted:
        pairs = f"{encrypted['genuine_pairs']:,} genuine"
        labels["he"] = f"he, CKKS ({pairs}, {encrypted['he_impostor_pairs']:,} impostor pairs)"
        labels["hybrid"] = f"hybrid 1:1 ({pairs}, {encrypted['hybrid_impostor_pairs']:,} impostor pairs)"
    clipped = False
    for name, curve in result["det"].items():
        fmr = np.asarray(curve["fmr"], dtype=np.float64)
        fnmr = np.asarray(curve["fnmr"], dtype=np.float64)
        keep = fmr > 0
        clipped |= bool(np.any(fnmr[keep] < fnmr_floor))
        style, width = _DET_STYLES.get(name, ("-", 1.6))
        axes.plot(
            fmr[keep],
            np.maximum(fnmr[keep], fnmr_floor),
            label=labels.get(name, name),
            linestyle=style,
            linewidth=width,
        )
    for far in params["far_targets"]:
        axes.axvline(float(far), color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(fmr_floor, 1.0)
    axes.set_ylim(fnmr_floor * 0.8, 1.0)
    axes.set_xlabel("false match rate (FMR)")
    axes.set_ylabel("false non-match rate (FNMR)")
    axes.set_title(f"'{params['profile']}' synthetic faces, {params['n']} identities")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize=7)
    if clipped:
        axes.text(
            0.02, 0.02, "FNMR 0 (no errors seen) drawn at the floor", transform=axes.transAxes, fontsize=8
        )


def write_report_pngs(report: dict[str, Any], directory: str | os.PathLike[str]) -> dict[str, str | None]:
    """``det.png``, ``unlinkability.png`` and (with ``report["speed"]``) ``speed.png`` in ``directory``.

    Returns each plot's path, or None where it was not drawn (no matplotlib, or
    no speed results); a plot not drawn is removed, so no older run's plot stays
    beside a new report.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, Callable[[Any, Path], bool], Any]] = [
        ("det", write_det_png, report),
        ("unlinkability", write_unlinkability_png, report["d_sys"]),
    ]
    if report.get("speed"):
        plots.append(("speed", write_speed_png, report["speed"]))
    files: dict[str, str | None] = {}
    for name, writer, data in plots:
        path = folder / f"{name}.png"
        if writer(data, path):
            files[name] = str(path)
        else:
            path.unlink(missing_ok=True)
            files[name] = None
    return files


__all__ = [
    "write_det_png",
    "write_report_pngs",
    "write_speed_png",
    "write_unlinkability_png",
]
