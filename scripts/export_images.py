"""Export the images a run logged to TensorBoard as PNG files (the last step of each tag).

    python scripts/export_images.py RUN_DIR OUT_DIR [--prefix z_grad_flow/]

Reads the event files with TensorBoard's own EventAccumulator; this is how the README's
TensorBoard figures are made.
"""

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab.analysis.figures import event_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--prefix", default="z_grad_flow/", help="only tags that start with this")
    args = parser.parse_args()
    directory = event_dir(args.run_dir)
    if directory is None:
        parser.error(f"no TensorBoard event files in {args.run_dir}")
    events = EventAccumulator(str(directory), size_guidance={"images": 0})
    events.Reload()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for tag in events.Tags()["images"]:
        if tag.startswith(args.prefix):
            last = events.Images(tag)[-1]
            path = args.out_dir / (tag.removeprefix(args.prefix).replace("/", "_") + ".png")
            path.write_bytes(last.encoded_image_string)
            print(f"{tag} (step {last.step}) -> {path}")


if __name__ == "__main__":
    main()
