"""A report's headline figures: a summary for reading at a glance and plain-text tables."""

from __future__ import annotations

from typing import Any

from .metrics import far_label


_SCHEMES = ("plain", "hash", "he", "hybrid")


#: Speed figures the summary keeps (means, or rates).
_SPEED_KEYS = (
    "plain_ms", "hash_flat_ms", "hash_identify_ms", "hash_ivf_ms", "he_identify_ms", "hybrid_identify_ms",
    "plain_verify_ms", "hash_verify_ms", "he_verify_ms", "hybrid_verify_ms",
    "plain_enrol_per_s", "hash_enrol_per_s", "he_enrol_per_s", "hybrid_enrol_per_s",
)  # fmt: skip


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline figures per profile, for reading at a glance (None: not supported by the trials run)."""
    out: dict[str, Any] = {}
    for name, result in report["profiles"].items():
        schemes = result["schemes"]
        ident = result["identification"]
        link = report["d_sys"][name]
        renewal = report["renewability"][name]
        inversion = report["irreversibility"][name]
        accepted = f"accepted_at_fmr_{far_label(inversion['far'])}"
        speed = (report.get("speed") or {}).get(name, {"points": []})
        present = [scheme for scheme in _SCHEMES if scheme in schemes]
        out[name] = {
            "verification": {
                scheme: {
                    **{f"tar_at_far_{f}": v["tar"] for f, v in schemes[scheme]["tar_at_far"].items()},
                    "eer": schemes[scheme]["eer"],
                    "pairs": [schemes[scheme]["genuine_pairs"], schemes[scheme]["impostor_pairs"]],
                }
                for scheme in present
            },
            "identification": {
                scheme: {
                    "rank1": ident[scheme]["rank1"],
                    **{
                        f"fnir_at_fpir_{f}": {"rank1": v["fnir_rank1"], "candidate_list": v["fnir_candidate_list"]}
                        for f, v in ident[scheme]["at_fpir"].items()
                    },
                    "searches": [ident[scheme]["mated_searches"], ident[scheme]["nonmated_searches"]],
                }
                for scheme in present
            },
            "d_sys": {k: link[k] for k in ("value", "value_kde", "sampling_floor", "meets_target")},
            "renewability": {
                "genuine_mean_std": [renewal["genuine_same_key"]["mean"], renewal["genuine_same_key"]["std"]],
                "impostor_mean_std": [renewal["impostor_same_key"]["mean"], renewal["impostor_same_key"]["std"]],
                "renewed_mean_std": [renewal["renewed_mated"]["mean"], renewal["renewed_mated"]["std"]],
                "ks_renewed_vs_impostor": renewal["ks_renewed_vs_impostor"]["statistic"],
                "ks_genuine_vs_impostor": renewal["ks_genuine_vs_impostor"]["statistic"],
            },
            "irreversibility": {
                attacker: {
                    "cosine_to_original_mean": figures["cosine_to_original_mean"],
                    accepted: figures[accepted],
                }
                for attacker, figures in inversion.items()
                if isinstance(figures, dict)
            },
            "speed": {
                str(point["n"]): {
                    key: (point[key] if key.endswith("_per_s") else point[key]["mean"])
                    for key in _SPEED_KEYS
                    if key in point
                }
                for point in speed["points"]
            },
            "bytes_per_template": speed.get("bytes_per_template"),
        }
    return out


def _cell(value: float | None, width: int, digits: int = 4) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def report_text(report: dict[str, Any]) -> str:
    """The report's headline figures as plain-text tables (``-``: not supported by the trials run, or not run)."""
    lines: list[str] = []
    first = next(iter(report["profiles"].values()))["parameters"]
    fars = first["far_targets"]
    fpir = first["fpir_targets"][0]
    lines.append(
        f"{'profile':<9}{'scheme':<8}" + "".join(f"{'TAR@' + f:>10}" for f in fars)
        + f"{'EER':>8}{'rank-1':>8}{'FNIR@' + fpir:>11}{'(list)':>8}{'pairs gen/imp':>20}{'searches':>14}"
    )
    for name, result in report["profiles"].items():
        ident = result["identification"]
        for scheme in _SCHEMES:
            if scheme not in result["schemes"]:
                continue
            figures = result["schemes"][scheme]
            point = ident[scheme]["at_fpir"][fpir]
            lines.append(
                f"{name:<9}{scheme:<8}" + "".join(_cell(figures["tar_at_far"][f]["tar"], 10) for f in fars)
                + f"{figures['eer']:>8.4f}{ident[scheme]['rank1']:>8.4f}"
                + _cell(point["fnir_rank1"], 11) + _cell(point["fnir_candidate_list"], 8)
                + f"{figures['genuine_pairs']:>10,}/{figures['impostor_pairs']:<9,}"
                + f"{ident[scheme]['mated_searches']:>7,}/{ident[scheme]['nonmated_searches']:<6,}"
            )
        for scheme in ("he", "hybrid"):
            if scheme in result["schemes"]:
                same = result["schemes"][scheme]["plain_same_pairs"]
                same_ident = ident[scheme]["plain_same_searches"]
                lines.append(
                    f"{name:<9}{'~plain':<8}"
                    + "".join(_cell(same["tar_at_far"][f]["tar"], 10) for f in fars)
                    + f"{same['eer']:>8.4f}{same_ident['rank1']:>8.4f}"
                    + _cell(same_ident["at_fpir"][fpir]["fnir_rank1"], 11)
                    + f"{'':8}  plain cosine on the {scheme} pairs and searches; "
                    f"max |{scheme} - plain| {result['schemes'][scheme]['max_abs_error_vs_plain']:.1e}"
                )
        if "hybrid" in ident:
            hybrid = ident["hybrid"]
            lines.append(
                f"{name:<9}hybrid shortlist of {hybrid['shortlist']}: holds the mate in "
                f"{hybrid['shortlist_recall']:.4f} of mated searches; top-1 agrees with plain in "
                f"{hybrid['rank1_agreement_with_plain']:.4f}"
            )
    lines.append("")
    for name in report["profiles"]:
        link, renewal = report["d_sys"][name], report["renewability"][name]
        lines.append(
            f"{name}: D_sys {link['value']:.4f} (KDE {link['value_kde']:.4f}, sampling floor "
            f"{link['sampling_floor']:.4f}, target <= {link['target']}; plain templates "
            f"{link['reference']['plain_templates']:.3f})"
        )
        parts = [
            f"{label} {renewal[key]['mean']:+.4f} +/- {renewal[key]['std']:.4f}"
            for key, label in (("genuine_same_key", "genuine"), ("impostor_same_key", "impostor"),
                               ("renewed_mated", "renewed"))
        ]  # fmt: skip
        lines.append(
            f"{name}: scores " + ", ".join(parts)
            + f"; KS renewed/impostor {renewal['ks_renewed_vs_impostor']['statistic']:.4f}"
            f" (above {renewal['ks_renewed_vs_impostor']['a_above_b']:.4f}),"
            f" genuine/impostor {renewal['ks_genuine_vs_impostor']['statistic']:.4f}"
        )
        inversion = report["irreversibility"][name]
        accepted = f"accepted_at_fmr_{far_label(inversion['far'])}"
        lines.append(f"{name}: inversion, cosine to the original / accepted by plain matching at FMR "
                     f"{far_label(inversion['far'])}:")  # fmt: skip
        for attacker, figures in inversion.items():
            if isinstance(figures, dict):
                lines.append(
                    f"{'':4}{attacker:<30}{figures['cosine_to_original_mean']:>7.3f}{figures[accepted]:>8.3f}"
                )
    speed = report.get("speed") or {}
    if speed:
        lines.append("")
        columns = (("plain_ms", "plain"), ("hash_identify_ms", "hash"), ("hash_ivf_ms", "IVF"),
                   ("he_identify_ms", "he"), ("hybrid_identify_ms", "hybrid"))  # fmt: skip
        verifiers = ("plain", "hash", "he", "hybrid")
        lines.append(
            f"{'profile':<9}{'n':>10}" + "".join(f"{label + ' ms':>11}" for _, label in columns)
            + "".join(f"{label + ' 1:1':>11}" for label in verifiers)
            + "".join(f"{label + ' /s':>11}" for label in verifiers)
        )
        for name, result in speed.items():
            for point in result["points"]:
                cells = [point[key]["mean"] if key in point else None for key, _ in columns]
                cells += [point[f"{s}_verify_ms"]["mean"] if f"{s}_verify_ms" in point else None for s in verifiers]
                rates = [point.get(f"{s}_enrol_per_s") for s in verifiers]
                lines.append(
                    f"{name:<9}{point['n']:>10,}" + "".join(_cell(v, 11) for v in cells)
                    + "".join(_cell(v, 11, 0) for v in rates)
                )
            sizes = result.get("bytes_per_template", {})
            lines.append(f"{name}: bytes per template " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    return "\n".join(lines)


__all__ = [
    "report_summary",
    "report_text",
]
