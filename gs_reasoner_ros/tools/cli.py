"""The `gs-reasoner` command. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; heavy imports happen inside `run`."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("gs_reasoner_ros.tools.demo", "replay a bundled scene through the live node and ask it questions"),
    "infer": ("gs_reasoner_ros.tools.infer", "answer one question about a recorded scene"),
    "bench": ("gs_reasoner_ros.tools.bench", "measure inference and mapping speed"),
    "train": ("gs_reasoner_ros.training.cli", "train or fine-tune GS-Reasoner"),
    "eval": ("gs_reasoner_ros.evaluation.cli", "evaluate on a benchmark"),
    "export-scene": ("gs_reasoner_ros.tools.export_scene", "write a scene or rosbag as processed-data keyframes"),
    "replay": ("gs_reasoner_ros.tools.replay", "play a rosbag2's camera and TF topics into the running node"),
    "demo-eval": ("gs_reasoner_ros.tools.demo_eval", "score held-out generated rooms through the node's ~/ground and ~/ask"),
    "soak": ("gs_reasoner_ros.tools.soak", "replay many frames through the running node with queries; memory curve"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gs-reasoner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # subcommand not built yet in this tree
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
