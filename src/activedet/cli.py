"""Command line: the only place that reads argv.

Every command exits non-zero with a one-line message (no traceback) on bad input, and
offers ``--json`` where a script would want machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from activedet.console import LineProgress
from activedet.errors import ActivedetError
from activedet.launch import ERROR_FILE_ENV
from activedet.report.status_text import status_text

EPILOG = "Docs: README.md. Configs: configs/*.yaml. Every YAML key has a default."


def _config(args: argparse.Namespace) -> Any:
    """The experiment config of ``simulate`` / ``select``: the file, ``--set`` and the
    command's overrides (``--nproc`` checked first)."""
    from activedet.config import load_config

    if args.nproc is not None and args.nproc < 1:
        raise ActivedetError(f"--nproc must be >= 1, got {args.nproc}")
    cfg = load_config(args.config, args.set)
    if args.device:
        cfg.device = args.device
    if getattr(args, "seed", None) is not None:
        cfg.seed = args.seed
    return cfg


def _cmd_simulate(args: argparse.Namespace) -> int:
    from activedet import distributed
    from activedet.launch import must_launch, relaunch, resume_command
    from activedet.loop.runner import run
    from activedet.loop.signals import signal_number, stop_on_signals

    cfg = _config(args)
    if must_launch(args.nproc):  # start the processes, then wait for them
        return relaunch("simulate", args, f"continue with: {resume_command(args)}")
    with distributed.process_group(cfg.device) as main_rank:  # under torchrun: join the group; else nothing
        try:
            with stop_on_signals():  # SIGTERM unwinds like Ctrl-C
                status = run(cfg, args.out, resume=args.resume, progress=not args.quiet,
                             round0_cache=args.round0_cache)
        except KeyboardInterrupt as e:
            signum = signal_number(e)
            if main_rank:  # one line for the run, not one per process
                print(f"activedet simulate: stopped by {signal.Signals(signum).name}; the ledger ends at the last "
                      f"complete step; continue with: {resume_command(args)}", file=sys.stderr)
            return 128 + signum
    if not main_rank:  # ranks other than 0 say nothing
        return 0
    print(json.dumps(status) if args.json else status_text(status))
    return 0


#: What Ctrl-C leaves behind, per command (simulate says its own resume command).
_INTERRUPTED = {
    "select": "the project is as before this command (a trained round's checkpoint is kept and reused); "
              "run the same command again to continue",
    "ingest": "nothing was merged; run the same command again",
    "export": "the output file was not written; run the same command again",
    "report": "run the same command again",
    "compare": "finished cells are kept and an unfinished one continues: run the same command again",
    "predict": "the chunks sent so far are kept; run the same command again to send the rest (nothing twice)",
    "serve": "stopped; annotations that arrived are on disk under DIR/webhooks/ and are ingested at the next start",
}


def _cmd_status(args: argparse.Namespace) -> int:
    from activedet.loop.ledger import Ledger

    with Ledger(args.run_dir) as ledger:
        status = ledger.status()
        meta = ledger.meta()
    if meta.get("label_studio"):  # a project bound to Label Studio: how far its round is there
        from activedet.labeling.studio import describe

        status["label_studio"] = describe(meta["label_studio"], meta["project"]["uid"],
                                          (status.get("labeling") or {}).get("pending_round"),
                                          args.label_studio_key_file)
    print(json.dumps(status) if args.json else status_text(status))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from activedet import distributed
    from activedet.labeling.project import SelectOptions, select
    from activedet.labeling.studio import connect_for_select, sync_pending
    from activedet.launch import must_launch, relaunch

    cfg = _config(args)
    opts = SelectOptions(budget=args.budget, strategy=args.strategy, unit=args.unit, replace=args.replace,
                         image_url_prefix=args.image_url_prefix, local_files_root=args.local_files_root,
                         prelabel_score=args.prelabel_score, predictions=args.predictions,
                         predictions_format=args.predictions_format, score_as_probs=args.score_as_probs,
                         embeddings=args.embeddings, embedding_ids=args.embedding_ids)
    project, studio = Path(args.project), None
    if args.label_studio:  # before any work: the server answers and takes the key
        studio, sync = connect_for_select(args.label_studio, args.label_studio_key_file, project, args.replace,
                                          args.label_studio_relink)
        if sync is not None:
            return _print_sync(args, sync)
    if must_launch(args.nproc):  # start the processes, then wait for them
        code = relaunch("select", args, "the project holds the last complete step; run the same select again")
        if code == 0 and studio is not None:
            return _print_sync(args, sync_pending(project, studio, args.label_studio_relink))
        return code
    with distributed.process_group(cfg.device) as main_rank:  # under torchrun: join the group; else nothing
        res = select(cfg, args.project, opts, progress=not args.quiet)
    if not main_rank:  # ranks other than 0 say nothing
        return 0
    sync = None if studio is None else sync_pending(project, studio, args.label_studio_relink)
    if args.json:
        rows = [{"rank": im.rank, "image_id": im.image_id, "path": im.path, "score": im.score} for im in res.images]
        print(json.dumps({"round": res.round, "dir": str(res.out_dir), "files": [str(f) for f in res.files],
                          "trained": res.trained, "metrics": res.metrics, "dropped": res.dropped,
                          "pool_left": res.pool_left, "quarantined": {str(i): w for i, w in res.quarantined.items()},
                          "batch": rows, "label_studio": sync}))
        return 0
    for why in res.quarantined.values():
        print(f"left out of the pool (unreadable; dataset.bad_images: skip): {why}")
    if res.dropped:
        print(f"dropped {res.dropped} unlabeled images of the replaced batch (back in the pool)")
    model = (f"ranked from {args.predictions}" if args.predictions else "no model yet: random draw"
             if res.round == 0 else "model trained" if res.trained else "model reused (labeled set unchanged)")
    print(f"round {res.round}: selected {len(res.images)} images ({model}); {res.pool_left} left in the pool")
    for f in res.files:
        print(f"  {f}")
    if sync is not None:
        return _print_sync(args, sync, in_json=False)
    print(f"next: label them (Label Studio: import {res.out_dir / 'labelstudio' / 'tasks.json'}), then "
          f"`activedet ingest --project {args.project} EXPORT.json`")
    return 0


def _print_sync(args: argparse.Namespace, sync: dict[str, Any], in_json: bool = True) -> int:
    from activedet.labeling.studio import sync_text

    if in_json and args.json:
        print(json.dumps({"round": sync["round"], "label_studio": sync}))
    else:
        print(sync_text(sync, args.project))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from activedet.labeling.ingest import ingest

    if (args.file is None) == (args.label_studio is None):
        raise ActivedetError("ingest takes an export FILE or --label-studio URL (the bound project's tasks), "
                             "one of them")
    if args.label_studio is not None:
        from activedet.labeling.studio import pull_and_ingest

        args.file, res = pull_and_ingest(Path(args.project), args.label_studio, args.label_studio_key_file)
    else:
        res = ingest(args.project, args.file)
    if args.json:
        print(json.dumps({"round": res.round, "added": res.added, "updated": res.updated,
                          "unchanged": res.unchanged, "boxes": res.boxes, "skipped": res.skipped,
                          "unannotated": res.unannotated, "remaining": res.remaining,
                          "labeled_images": res.labeled_images, "labeled_boxes": res.labeled_boxes,
                          "corrected": res.corrected}))
        return 0
    print(f"ingested {args.file}: {res.added} images added, {res.updated} updated, {res.unchanged} unchanged "
          f"({res.boxes} boxes); labeled set now {res.labeled_images} images / {res.labeled_boxes} boxes")
    if res.corrected:
        print(f"  {res.corrected} images of closed rounds corrected (recorded as revisions; the next select "
              f"retrains on the corrected labels)")
    for what, items in (("skipped (cancelled)", res.skipped), ("not annotated yet", res.unannotated)):
        if items:
            print(f"  {len(items)} {what}: " + "; ".join(items[:5]) + (" ..." if len(items) > 5 else ""))
    if res.round is None:
        print("no round is pending: run `activedet select` for the next batch")
    elif res.remaining:
        print(f"partial batch: {res.remaining} images of round {res.round} are still pending; ingest them "
              f"later, or `activedet select ... --replace` to drop them")
    else:
        print(f"round {res.round} complete: run `activedet select` for the next batch")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from activedet.labeling.backend import serve

    key = None
    if args.label_studio_key_file or os.environ.get("LABEL_STUDIO_API_KEY"):
        from activedet.labeling.studio import api_key

        key = api_key(args.label_studio_key_file)
    serve(args.project, args.host, args.port, args.device, args.local_files_root, key)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from activedet.errors import ConfigError
    from activedet.labeling.bulk import PredictOptions, predict_pool

    ids = None
    if args.ids:
        try:
            text = Path(args.ids[1:]).read_text() if args.ids.startswith("@") else args.ids.replace(",", " ")
            ids = [int(v) for v in text.split()]
        except OSError as e:
            raise ConfigError(f"--ids {args.ids}: {e.strerror or e}") from None
        except ValueError:
            raise ConfigError(f"--ids {args.ids!r}: image ids separated by commas, or @FILE with one id per "
                              f"line") from None
    studio = None
    if args.label_studio:
        from activedet.labeling.studio import connect

        studio = connect(args.label_studio, args.label_studio_key_file)
    opts = PredictOptions(ids=ids, chunk=args.chunk, prelabel_score=args.prelabel_score, device=args.device,
                          image_url_prefix=args.image_url_prefix, local_files_root=args.local_files_root)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    out = predict_pool(args.project, opts, studio, say)
    print(json.dumps(out) if args.json else
          f"{out['model_version']}: {out['sent']} images sent to {out['where']} ({out['already']} of the "
          f"{out['pool']} pool images held it already), {out['images_per_s']} images/s")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from activedet.compare import compare, table

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    summary = compare(args.config, strategies, args.seeds, args.out, jobs=args.jobs, unit=args.unit,
                      only=args.only, nproc=args.nproc, project=args.project,
                      allow_unequal=args.allow_unequal_budgets, overrides=args.set, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary))
    elif "cell" in summary:
        print(f"cell done: {summary['cell']} (a plain `activedet compare` with the same arguments aggregates)")
    else:
        print(table(summary))
        print(f"wrote {Path(args.out) / 'compare.json'} and {Path(args.out) / 'report' / 'index.html'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from activedet.labeling.export import export_project

    counts = export_project(args.project, args.out, args.format)
    print(json.dumps(counts) if args.json else
          f"wrote {args.out}: {counts['images']} images, {counts['annotations']} annotations "
          f"({counts['ingested']} images ingested by this project)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from activedet.report.runs import report_runs

    index, run_dirs, runs = report_runs(args.run_dirs, args.out)
    print(f"report written to {index}")
    if getattr(args, "heatmaps", 0):
        from activedet.report.mial_heatmap import write_run_heatmaps

        for d, status in zip(run_dirs, runs):
            if status["strategy"] != "mial":
                print(f"heat maps: skipping {d} (strategy '{status['strategy']}', not 'mial')")
                continue
            out = Path(args.out) / "heatmaps" / (Path(d).resolve().name or "run")
            paths = write_run_heatmaps(d, out, args.heatmaps)
            print(f"heat maps: {len(paths)} written to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from activedet.evaluation.detection import evaluate_files, format_metrics

    metrics = evaluate_files(args.gt, args.detections)
    print(json.dumps(metrics) if args.json else format_metrics(metrics))
    return 0


def _cmd_strategies(args: argparse.Namespace) -> int:
    from activedet.strategies.registry import available, get_strategy_class

    if args.name:
        return _strategy_settings(get_strategy_class(args.name), args.json)
    rows = []
    for name, cls in available().items():
        rows.append({"name": name, "tasks": list(cls.tasks),
                     "archs": list(cls.supported_archs() or ()) or "any",
                     "reference": cls.reference, "settings": cls.settings_type.defaults()})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            archs = r["archs"] if r["archs"] == "any" else ",".join(r["archs"])
            print(f"{r['name']:<24} {','.join(r['tasks']):<30} models: {archs:<28} {r['reference']}")
    return 0


def _strategy_settings(cls: Any, as_json: bool) -> int:
    """``activedet strategies NAME``: every declared setting with type, default and doc."""
    rows = [{"key": d.key, "type": d.type_name(), "default": d.default, "expected": d.expected(),
             "doc": d.spec.doc, "provenance": d.spec.provenance} for d in cls.settings_type.declared()]
    if as_json:
        print(json.dumps({"name": cls.name, "reference": cls.reference, "trainer": cls.trainer,
                          "settings": rows}))
        return 0
    print(f"{cls.name}: {cls.reference}")
    print(f"tasks: {', '.join(cls.tasks)}; models: {', '.join(cls.supported_archs() or ()) or 'any'}; "
          f"trainer: {cls.trainer}")
    if not rows:
        print("no settings")
    for r in rows:
        print(f"  {r['key']}: {json.dumps(r['default'])}    ({r['expected']})")
        print(f"      {r['doc']}" + (f" [{r['provenance']}]" if r["provenance"] else ""))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.schema:
        from activedet.config import json_schema
        from activedet.strategies.registry import available

        schema = json_schema({n: c.settings_type.json_schema() for n, c in available().items()})
        print(json.dumps(schema, indent=2))
        return 0
    if not args.config:
        raise ActivedetError("give a CONFIG.yaml to resolve, or --schema")
    from activedet.config import dump_config, load_config
    from activedet.loop.runner import resolve

    cfg = load_config(args.config, args.set)
    resolve(cfg)
    print(json.dumps(cfg.to_dict()) if args.json else dump_config(cfg), end="\n" if args.json else "")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from activedet.data.builtin import BUILTINS, export_builtin

    if args.action == "export":
        if not args.name or not args.dir:
            raise ActivedetError("usage: activedet datasets export NAME DIR")
        from activedet.files import writing
        from activedet.loop.ledger import check_out_dir

        with writing("dataset export", args.dir):
            paths = export_builtin(args.name, check_out_dir(args.dir, "DIR"))
        for split, p in paths.items():
            print(f"{split}: {p}")
        return 0
    rows = [{"name": n, "task": b.task, "description": b.description} for n, b in BUILTINS.items()]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['task']:<15} {r['description']}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from activedet.doctor import diagnose
    from activedet.errors import ConfigError

    if args.budget is not None and args.budget < 1:
        raise ConfigError(f"--budget must be a positive integer, got {args.budget}")
    problems, checked = diagnose(args.config, progress=not args.quiet, budget=args.budget)
    problems = [" ".join(p.split()) for p in problems]  # one line each
    if args.json:
        print(json.dumps({"config": args.config, "problems": problems, "checked": checked}))
    elif problems:
        for p in problems:
            print(p)
    else:
        print(f"ok: {', '.join(checked)}")
    return 1 if problems else 0


def _key_file_argument(s: argparse.ArgumentParser, why: str) -> None:
    s.add_argument("--label-studio-key-file", metavar="F",
                   help=f"file holding the Label Studio API key (default: $LABEL_STUDIO_API_KEY); {why}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="activedet",
        description="Choose which images to label next so a detector (or classifier) improves "
                    "the most per annotation. Implements MIAL, ISAL and their baselines.",
        epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    from activedet import __version__

    p.add_argument("--version", action="version", version=f"activedet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="replay an active-learning protocol with oracle labels",
                       description="Run initial random labeling + `loop.cycles` strategy cycles on a "
                                   "labeled dataset, recording everything in RUN_DIR/ledger.sqlite.")
    s.add_argument("config", help="experiment config (YAML)")
    s.add_argument("--out", required=True, help="run directory (created)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last recorded step")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    s.add_argument("--seed", type=int, help="override the config's seed")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--json", action="store_true", help="print the final status as JSON")
    s.add_argument("--round0-cache", metavar="DIR",
                   help="share round 0's model with other runs of the same seed and data through DIR "
                        "(compare passes OUT/round0; strategies with the plain model and trainer only)")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("doctor", help="check a config and its data, weights and device without training",
                       description="Load the config and every split, decode every image, check boxes, "
                                   "classes across splits, the loop's budget, the availability of ImageNet "
                                   "weights (nothing is downloaded) and the device. Prints one line per "
                                   "problem and exits 1 when there is any, else one 'ok' line and 0.")
    s.add_argument("config", help="experiment config (YAML)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--budget", type=int, metavar="N",
                   help="the budget of the next `select` (images): checked against the unlabeled pool")
    s.add_argument("--json", action="store_true", help='{"problems": [...], "checked": [...]}')
    s.set_defaults(func=_cmd_doctor)

    s = sub.add_parser("status", help="rounds, selections, costs and metrics of a run")
    s.add_argument("run_dir", help="a run directory (simulate --out) or a labeling project")
    _key_file_argument(s, "to count the round's tasks labeled in the bound Label Studio project")
    s.add_argument("--json", action="store_true", help="machine-readable status")
    s.set_defaults(func=_cmd_status)

    s = sub.add_parser("select", help="score a real pool and write the next batch to label",
                       description="Train on the labeled set (dataset.train plus everything ingested; "
                                   "the checkpoint is reused when it did not change), rank the images of "
                                   "dataset.unlabeled with the strategy and write DIR/rounds/NNN/: "
                                   "batch.csv, batch.coco.json (the model's detections as pre-annotations) "
                                   "and labelstudio/tasks.json + config.xml. The round stays pending "
                                   "until its labels are ingested.")
    s.add_argument("config", help="experiment config (YAML) with dataset.train and dataset.unlabeled")
    s.add_argument("--project", required=True, help="project directory (created on first use)")
    s.add_argument("--budget", required=True, type=int, help="how many images (or boxes, see --unit) to select")
    s.add_argument("--strategy", help="strategy name (default: the config's strategy)")
    s.add_argument("--unit", choices=["images", "boxes"], default="images",
                   help="budget unit; boxes: predicted boxes per image (detections >= --prelabel-score, "
                        "at least 1)")
    s.add_argument("--replace", action="store_true",
                   help="drop the unlabeled images of the pending batch and select again")
    s.add_argument("--image-url-prefix", metavar="P",
                   help="Label Studio image URLs: P + the path relative to the pool folder")
    s.add_argument("--local-files-root", metavar="R",
                   help="Label Studio local-files URLs relative to R (default: the folder holding the pool "
                        "folder); serve with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=R and a Local files storage on the pool folder")
    s.add_argument("--prelabel-score", type=float, default=0.5,
                   help="detections at least this confident become Label Studio pre-annotations (default 0.5)")
    s.add_argument("--predictions", metavar="FILE",
                   help="rank from your own detector's COCO results file (Ultralytics predictions.json, detectron2 "
                        "coco_instances_results.json, MMDetection *.bbox.json) instead of training; its detections "
                        "become the pre-annotations")
    s.add_argument("--predictions-format", choices=["auto", "ultralytics", "coco", "detectron2", "mmdetection"],
                   default="auto", help="how FILE names images and classes (default auto: ultralytics when every "
                                        "detection's image_id is its file_name's stem, else coco)")
    s.add_argument("--score-as-probs", action="store_true",
                   help="FILE has no per-class 'probs': let entropy/margin score each detection from its score alone")
    s.add_argument("--embeddings", metavar="E.npy", help="with --predictions: (N, D) per-image features, for coreset "
                                                         "and the batch modes (labeled images need rows too)")
    s.add_argument("--embedding-ids", metavar="IDS", help="the images of E.npy's rows, one a line (id or file name)")
    s.add_argument("--label-studio", metavar="URL",
                   help="import the round into Label Studio over its API (first round: create a project bound "
                        "to this one, with the labeling config and a local-files storage on the pool folder); "
                        "re-running after a failure completes the import without duplicates")
    _key_file_argument(s, "never recorded")
    s.add_argument("--label-studio-relink", action="store_true",
                   help="bind to a new Label Studio project (the recorded one was deleted there) and import "
                        "the pending round into it")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--json", action="store_true", help="print the round and its batch as JSON")
    s.set_defaults(func=_cmd_select)

    s = sub.add_parser("compare", help="which strategy saves boxes on your data: strategies x seeds, paired",
                       description="Replay CONFIG's protocol for every strategy x seed (each cell a resumable "
                                   "simulate run under OUT/runs/, equal training budgets), then compare them "
                                   "with random paired by seed, per image and per box, with a verdict per "
                                   "strategy and one recommendation (OUT/compare.json, OUT/report/index.html). "
                                   "Re-running continues; --only runs one cell (a job array over machines "
                                   "sharing OUT), a plain run then aggregates.")
    s.add_argument("config", help="experiment config (YAML): data, model, training and loop protocol")
    s.add_argument("--strategies", required=True,
                   help="comma-separated: NAME or NAME:key=value;key=value (e.g. random,entropy,"
                        "entropy:batch=kcenter,mial)")
    s.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per strategy (default 3)")
    s.add_argument("--out", required=True, help="output directory (runs/, compare.json, report/)")
    s.add_argument("--jobs", type=int, default=1, help="cells run at once, the cores split between them "
                   "(under threads: 0; otherwise each cell runs on its config's threads)")
    s.add_argument("--unit", choices=["images", "boxes", "seconds"],
                   help="the budget unit of every cell; default for detection: boxes, so every strategy's "
                        "rounds meet at equal cost (a config in images is converted at the pool's mean boxes per "
                        "image); seconds: annotator seconds with pre-annotations; compare reports images, boxes "
                        "and annotator seconds either way")
    s.add_argument("--only", metavar="STRATEGY:SEED", help="run this one cell and stop (no aggregation)")
    s.add_argument("--nproc", type=int, help="run each cell under torchrun with N processes")
    s.add_argument("--project", metavar="DIR", help="replay on the labels an `activedet select` project holds")
    s.add_argument("--allow-unequal-budgets", action="store_true",
                   help="run strategies whose labeled training iterations differ from random's")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("serve", help="a Label Studio ML backend for a labeling project",
                       description="Answer Label Studio's ML-backend protocol (/health, /setup, /predict, "
                                   "/webhook) for the project: /predict returns the current model's boxes for any "
                                   "task; Start training (START_TRAINING) retrains in the background on "
                                   "everything labeled and bumps model_version; annotation webhooks are "
                                   "ingested. In Label Studio: Settings -> Model -> Connect model, URL "
                                   "http://HOST:PORT.")
    s.add_argument("--project", required=True, help="project directory (after its first select)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the project's device")
    s.add_argument("--local-files-root", metavar="R",
                   help="Label Studio's local-files document root, to read /data/local-files/ images "
                        "(default: $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, else the folder holding the pool)")
    _key_file_argument(s, "to fetch images Label Studio serves; else the token Label Studio sends to /setup")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("predict", help="the current model's predictions for the whole pool, in bulk, as Label "
                                       "Studio predictions",
                       description="Score the pool (or --ids) with the current model (serve's: the checkpoint of "
                                   "everything labeled, trained first if needed) in chunks, scoring one chunk while "
                                   "the last one uploads. --label-studio: into the bound project (a prediction for "
                                   "each task that shows a pool image, a new task for an image without one). "
                                   "Else files DIR/predictions/VERSION/chunk-NNNNN.json to import. Resumable after "
                                   "a kill; a re-run sends only what is missing (no duplicate predictions).")
    s.add_argument("--project", required=True, help="project directory (after its first select)")
    s.add_argument("--label-studio", metavar="URL", help="the Label Studio the project is bound to")
    _key_file_argument(s, "never recorded")
    s.add_argument("--ids", metavar="IDS", help="only these pool image ids: 1,2,3 or @FILE (one id per line)")
    s.add_argument("--chunk", type=int, default=256, help="images per chunk (default 256)")
    s.add_argument("--prelabel-score", type=float, default=0.5,
                   help="detections at least this confident become predictions (default 0.5)")
    s.add_argument("--image-url-prefix", metavar="P", help="as select's: image URLs of new tasks")
    s.add_argument("--local-files-root", metavar="R", help="as select's: local-files URLs relative to R")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the project's device")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--json", action="store_true", help="machine-readable summary")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("ingest", help="merge labels (Label Studio JSON export or COCO) into the labeled set",
                       description="Validate FILE against the pending batch and merge it into the labeled "
                                   "set in one transaction. Label Studio: per task the latest non-cancelled "
                                   "annotation counts; cancelled/skipped tasks are not counted. COCO: every "
                                   "listed image is labeled (no annotations = an empty image). Ingesting the "
                                   "same file twice changes nothing; a partial batch stays pending.")
    s.add_argument("--project", required=True, help="project directory")
    s.add_argument("file", nargs="?", help="Label Studio JSON export, or a COCO json (CVAT, Label Studio COCO, ...)")
    s.add_argument("--label-studio", metavar="URL",
                   help="pull the bound Label Studio project's annotations over its API instead of a file "
                        "(saved under DIR/rounds/NNN/labelstudio/export-*.json, then ingested)")
    _key_file_argument(s, "to pull the annotations")
    s.add_argument("--json", action="store_true", help="machine-readable summary")
    s.set_defaults(func=_cmd_ingest)

    s = sub.add_parser("export", help="the whole labeled set of a project as one COCO file")
    s.add_argument("--project", required=True, help="project directory")
    s.add_argument("--format", choices=["coco"], default="coco", help="output format (COCO json)")
    s.add_argument("out", metavar="OUT.json", help="the file to write")
    s.add_argument("--json", action="store_true", help="print counts as JSON")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("report", help="curves (AP vs images, AP vs boxes), tables and an HTML page")
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="runs of one dataset, pool and budget (seeds of a strategy are averaged)")
    s.add_argument("--out", required=True, help="output directory for index.html, PNGs and table.md")
    s.add_argument("--heatmaps", type=int, default=0, metavar="N",
                   help="mial runs: heat maps of instance uncertainty and MIL score (paper Fig. 6) "
                        "for the N top-scored images of the last selection, under OUT/heatmaps/")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("evaluate", help="COCO AP of detections (pycocotools)")
    s.add_argument("--gt", required=True, help="COCO ground-truth json")
    s.add_argument("--detections", required=True, help="COCO results json (list of detections)")
    s.add_argument("--json", action="store_true", help="print metrics as JSON")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("strategies", help="registered strategies, one line each; NAME: its settings",
                       description="Without NAME: every registered strategy. With NAME: each of its "
                                   "settings (the YAML keys beside `strategy.name`) with type, default, "
                                   "doc and, where paper and code differ, where the default comes from.")
    s.add_argument("name", nargs="?", metavar="NAME", help="a registered strategy")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_strategies)

    s = sub.add_parser("config", help="the resolved config (every default filled in); --schema: JSON Schema",
                       description="Print CONFIG.yaml resolved, as the ledger stores it: every key with its "
                                   "default, strategy settings included (model.image_size stays null = "
                                   "auto until the data is read). --schema prints a JSON Schema of every "
                                   "key, for editors (e.g. yaml-language-server) and checks.")
    s.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="experiment config (YAML)")
    s.add_argument("--schema", action="store_true", help="print the JSON Schema of the whole config")
    s.add_argument("--json", action="store_true", help="the resolved config as JSON instead of YAML")
    s.set_defaults(func=_cmd_config)

    s = sub.add_parser("datasets", help="built-in datasets; `datasets export NAME DIR` writes one as COCO")
    s.add_argument("action", nargs="?", choices=["list", "export"], default="list",
                   help="list (default) or export")
    s.add_argument("name", nargs="?", help="export: the built-in dataset")
    s.add_argument("dir", nargs="?", help="export: the folder to write its splits into (as COCO)")
    s.add_argument("--json", action="store_true", help="machine-readable list")
    s.set_defaults(func=_cmd_datasets)
    for name, sp in sub.choices.items():  # `activedet simulate CFG -v` as well as `activedet -v simulate`
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log each step")
        if name in ("simulate", "select", "config"):
            sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config key (repeatable; VALUE is YAML), e.g. --set train.epochs=1 "
                                 "--set strategy.name=entropy; recorded in the resolved config")
        if name in ("simulate", "select"):
            sp.add_argument("--nproc", type=int, metavar="N",
                            help="run N processes on this host under torchrun (one GPU each with device cuda; "
                                 "gloo on CPU): training data-parallel, scoring sharded, rank 0 alone writes the "
                                 "run or project; see README 'Scale out'")
            sp.add_argument("--master-port", type=int, metavar="PORT",
                            help="with --nproc: the rendezvous port on 127.0.0.1 (default: a free one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stderr = sys.stderr
    if not getattr(stderr, "isatty", lambda: False)():
        sys.stderr = LineProgress(stderr)  # type: ignore[assignment]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if os.environ.get("RANK", "0") not in ("", "0"):  # a torchrun process other than rank 0: rank 0 logs
        logging.getLogger("activedet").setLevel(logging.ERROR)
    elif not getattr(args, "quiet", False):  # the current round and its result, without -v
        logging.getLogger("activedet.loop.runner").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except ActivedetError as e:
        msg = " ".join(str(e).split())  # one line
        if not getattr(e, "mirrored", False):  # a distributed run: rank 0 reported it already
            print(f"activedet {args.command}: error: {msg}", file=sys.stderr)
            if os.environ.get(ERROR_FILE_ENV):  # launched by `simulate|select --nproc`: say it was reported
                Path(os.environ[ERROR_FILE_ENV]).write_text("2")
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"activedet {args.command}: interrupted; {_INTERRUPTED.get(args.command, 'nothing was changed')}",
              file=sys.stderr)
        return 130
    finally:
        sys.stderr = stderr
        logging.getLogger("activedet.loop.runner").setLevel(logging.NOTSET)


if __name__ == "__main__":
    sys.exit(main())
