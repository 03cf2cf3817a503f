"""Run an ablation study: a grid of fine-tunes, each evaluated, into one results table and plots.

    python study.py studies/cot_ablation.yaml                 # run, or resume where it stopped
    python study.py studies/peft_methods.yaml --smoke         # the same grid, tiny: checks the wiring
    python study.py studies/peft_methods.yaml --set train.max_steps=50 --set evaluate.cot_math.max_samples=20
    python study.py studies/cot_ablation.yaml --dry_run       # list the cells, check every flag
    python study.py studies/cot_ablation.yaml --report_only   # rebuild results.md and plots
    python study.py studies/cot_ablation.yaml --estimate      # expected wall time and peak memory, run nothing
    python study.py studies/cot_ablation.yaml --cell with_cot --seed 2 --output_dir /tmp/rerun
                                                              # re-run one cell and seed alone, compare numbers

The study file's format is described in alpaca_cot/study.py. Results: OUT/results.md (one row
per cell: mean over seeds with 95% intervals, paired tests against the reference cell, bold
where significant), OUT/results.json, OUT/plots/*.png (error bars), and every run's fine-tune,
evaluations and manifest under OUT/cells/<cell>/seed<S>/. Every run prints the cost estimate
before it starts.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("study", help="the study file (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting by its dotted path, e.g. train.max_steps=10 (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="apply the file's 'smoke' overrides (a tiny run) and write to OUTPUT_DIR_smoke")
    parser.add_argument("--output_dir", help="where the study writes (default: the file's output_dir)")
    parser.add_argument("--dry_run", action="store_true", help="list the cells and check their flags, run nothing")
    parser.add_argument("--report_only", action="store_true", help="rebuild results.md and plots, run nothing")
    parser.add_argument("--estimate", action="store_true",
                        help="time a few steps and evaluation items per configuration, print the expected wall time "
                             "and peak memory of what is left to run, run nothing else")
    parser.add_argument("--cell", help="run only this cell (its name in results.md), after the cells whose "
                        "fine-tune it starts from ({cell:NAME} values) where they are not trained yet")
    parser.add_argument("--seed", type=int, help="with --cell: only this seed")
    args = parser.parse_args(argv)
    if args.seed is not None and args.cell is None:
        parser.error("--seed needs --cell")
    from alpaca_cot.data.schema import DataError
    from alpaca_cot.evaluation.judged import JudgeError
    from alpaca_cot.study import StudyError, StudyInterrupted, run_study
    from alpaca_cot.train import ConfigError, setup_logging

    setup_logging()
    overrides = args.overrides + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        out = run_study(args.study, overrides, smoke=args.smoke, report_only=args.report_only, dry_run=args.dry_run,
                        estimate_only=args.estimate, cell=args.cell, seed=args.seed)
    except (StudyInterrupted, KeyboardInterrupt) as e:
        sys.exit(f"interrupted{': ' + str(e) if str(e) else ''}; run the same command again to resume")
    except (StudyError, ConfigError, DataError, JudgeError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if not args.dry_run and not args.estimate:
        print((out / "results.md").read_text(encoding="utf-8"))
        print(f"wrote {out}/results.md, {out}/results.json and {out}/plots/; fine-tunes and evaluations in "
              f"{out}/cells/ and {out}/baselines/", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
