"""The Markdown summary of gpu_check.json (`markdown(result)`), one section per part."""

from __future__ import annotations

GIB = 2**30


def pct(stats: dict | None) -> str:
    """'96.67 ± 0.58 (3)' from mean_sd's dict of fractions; '-' when nothing finished."""
    if not stats or not stats.get("n"):
        return "-"
    sd = f" ± {stats['sd'] * 100:.2f}" if stats.get("sd") is not None else ""
    return f"{stats['mean'] * 100:.2f}{sd} ({stats['n']})"


def seconds(stats: dict | None) -> str:
    return f"{stats['mean']:.1f}" if stats and stats.get("n") else "-"


def gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def header(result: dict) -> list[str]:
    env = result.get("environment", {})
    where = env.get("gpu") or ("CPU (--smoke)" if result.get("smoke") else env.get("device", "?"))
    versions = ", ".join(f"{name} {env[name]}" for name in ("torch", "cuda", "transformers", "peft", "accelerate")
                         if env.get(name))
    lines = [f"# GPU check: {where}, {result.get('started', '?')}", "",
             f"{versions}; fp32 matmul precision {env.get('float32_matmul_precision')}; "
             f"budget {result.get('budget_s')} s, "
             f"elapsed {result.get('elapsed_s')} s{'' if result.get('finished') else ' (not finished)'}", "",
             "| part | status | seconds (cap) | note |", "|---|---|---|---|"]
    for name, part in result.get("parts", {}).items():
        note = part.get("reason") or part.get("error") or ""
        lines.append(f"| {name} | {part.get('status')} | {part.get('seconds')} ({part.get('cap_s')}) | {note[:160]} |")
    return lines


def tests_section(part: dict) -> list[str]:
    counts = ", ".join(f"{n} {outcome.lower()}" for outcome, n in sorted(part.get("counts", {}).items()))
    lines = [f"`{part.get('command', '')}`: {counts or 'nothing ran'}"]
    lines += [f"- {f['test']}: {f['message']}" for f in part.get("failures", [])]
    return lines


def gpt2_section(part: dict) -> list[str]:
    lines = ["| row | fp32 test acc % (seeds) | bf16 test acc % (seeds) | bf16 − fp32 (points, paired) "
             "| fp32 train_time_s | bf16 train_time_s |", "|---|---|---|---|---|---|"]
    for row, both in part.get("rows", {}).items():
        diff = both.get("bf16_minus_fp32_test_acc", {})
        paired = f"{diff['mean'] * 100:+.2f} ({diff['n']})" if diff.get("n") else "-"
        lines.append(f"| {row} | {pct(both['fp32']['test_acc'])} | {pct(both['bf16']['test_acc'])} | {paired} "
                     f"| {seconds(both['fp32']['train_time_s'])} | {seconds(both['bf16']['train_time_s'])} |")
    return lines


def smollm2_section(part: dict) -> list[str]:
    lines = [f"model: {part.get('model')}", "", "| row | train acc % | val acc % | test acc % (seeds) | train_time_s |",
             "|---|---|---|---|---|"]
    for row, stats in part.get("rows", {}).items():
        lines.append(f"| {row} | {pct(stats['train_acc'])} | {pct(stats['val_acc'])} | {pct(stats['test_acc'])} "
                     f"| {seconds(stats['train_time_s'])} |")
    return lines


def reference_section(part: dict) -> list[str]:
    if not part.get("rows"):
        return ["no row finished"]
    from bench_vs_reference import markdown_table

    setting = part.get("setting") or {}
    return [", ".join(f"{key}: {setting[key]}" for key in ("epochs", "split", "device") if key in setting), "",
            markdown_table(part["rows"])]


def sft_section(part: dict) -> list[str]:
    lines = [f"{part.get('steps')} optimizer steps per row on {part.get('model')} (random weights of its architecture)",
             "", "| row | trains | precision | cache | steps/s | peak GiB (measured) | predicted GiB (cost model) "
             "| measured / predicted | logits GiB (not in the cost model) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in part.get("rows", []):
        if "error" in row:
            lines.append(f"| {row['row']} | failed: {row['error'][:200]} | | | | | | | |")
            continue
        ratio = (f"{row['peak_bytes'] / row['predicted_peak_bytes']:.2f}"
                 if row.get("peak_bytes") and row.get("predicted_peak_bytes") else "-")
        lines.append(f"| {row['row']} | {', '.join(row['components'])} | {row['precision']} | {row['cache']} "
                     f"| {row['steps_per_s']} | {gib(row.get('peak_bytes'))} | {gib(row['predicted_peak_bytes'])} "
                     f"| {ratio} | {gib(row['logits_bytes'])} |")
    return lines


def generation_section(part: dict) -> list[str]:
    speeds = part.get("tokens_per_s") or {}
    lines = [part.get("model", ""), "", "| decoder | tokens/s |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in speeds.items()]
    lines += ["", f"cache speed-up {part.get('cache_speedup')}×, "
                  f"cached = uncached: {part.get('cached_equals_uncached')}, "
                  f"pause-head overhead {part.get('pause_overhead_pct')} %"]
    return lines


SECTIONS = {"tests": ("Equivalence tests on the device", tests_section),
            "gpt2_table": ("Classification table, random GPT-2-small weights: fp32 against bf16", gpt2_section),
            "smollm2_table": ("SmolLM2 classification table (full data)", smollm2_section),
            "reference": ("P1: against the reference's own code", reference_section),
            "sft": ("sft: steps/s and peak memory per pause-table row", sft_section),
            "generation": ("Decoding with and without the KV cache", generation_section)}


def markdown(result: dict) -> str:
    lines = header(result)
    for name, part in result.get("parts", {}).items():
        title, section = SECTIONS[name]
        lines += ["", f"## {title}", ""]
        if part.get("status") in ("skipped", "timeout") and not part.get("rows"):
            lines.append(f"{part['status']}: {part.get('reason', 'the part ran out of time before anything finished')}")
            continue
        lines += section(part)
        failed = {k: v for k, v in (part.get("failures") or {}).items() if v} if name.endswith("_table") else {}
        if failed:
            lines += ["", "failed runs: " + "; ".join(f"{k}: {v}" for k, v in failed.items())[:1500]]
        if part.get("log_tail"):
            lines += ["", "```", part["log_tail"][-1200:], "```"]
    return "\n".join(lines) + "\n"
