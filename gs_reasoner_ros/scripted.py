"""A FIXTURE (like synthetic.py; production code never imports it): a reasoner that writes a
scripted answer token by token, streaming it like the real one (the tiny untrained model writes
gibberish without boxes, so tests and benchmarks of streamed boxes need a script).

Its tokens are 3-character pieces of SCRIPT decoded by a tokenizer of those pieces, parsed by the
production StreamParser, one every `token_s` seconds; a truthy on_progress return stops it.
ROS-free; a test runs reasoner_node with it through gs_reasoner_ros.ros.process.run(argv,
reasoner_factory=...).
"""
from __future__ import annotations

import threading
import time

from gs_reasoner_ros.geometry import transform_points
from gs_reasoner_ros.reasoning import Answer, StreamParser, assign_confidences, parse_output

# Boxes in the model frame; the node rotates them back to world_frame.
SCRIPT = ("<think>I look at the room. sofa 1 <bbox>(0.50, 0.40, 0.00, 1.50, 1.20, 0.80)</bbox>, "
          "table 2 <bbox>(2.00, 0.50, 0.00, 2.80, 1.30, 0.70)</bbox> <bbox>(-1.0, -1.0, 0.0, -0.4, -0.2, 0.9)</bbox>. "
          "The sofa is left of the table, so the answer is B.</think><answer>B</answer>")
PIECE = 3


class PieceTokenizer:
    """Token i is the i-th piece of the script."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, **_):
        return "".join(self.pieces[i] for i in ids)


class ScriptedReasoner:
    untrained = True

    def __init__(self, script: str = SCRIPT, token_s: float = 0.01):
        self.pieces = [script[i:i + PIECE] for i in range(0, len(script), PIECE)]
        self.tokenizer = PieceTokenizer(self.pieces)
        self.token_s = token_s
        self.calls = 0
        self.running = threading.Event()

    def answer(self, scene, question, options=(), task="spatial", max_new_tokens=None, on_progress=None):
        self.calls += 1
        self.running.set()
        try:
            return self._write(scene, max_new_tokens, on_progress)
        finally:
            self.running.clear()

    def _write(self, scene, max_new_tokens, on_progress):
        transform_points(scene.axis_align, scene.poses[:, :3, 3])  # touches the scene as a model would
        parser, stopped = StreamParser(self.tokenizer), False
        for i in range(min(len(self.pieces), max_new_tokens or len(self.pieces))):
            time.sleep(self.token_s)
            progress = parser.feed(i, 0.9)
            if on_progress is not None and on_progress(progress):
                stopped = True
                break
        text, spans = parser.decoded.finish()
        think, answer, objects = parse_output(text)
        assign_confidences(objects, spans, parser.probs)
        return Answer(answer=answer, text=text, objects=objects, think=think, keyframes_used=len(scene),
                      untrained=True, stopped=stopped)

