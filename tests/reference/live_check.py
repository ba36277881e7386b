#!/usr/bin/env python3
"""Live parity check: transformers (imported now, not recorded) against `glmserve generate`.

For every fixture model, fresh random prompts (not the recorded ones) go through both; output ids
must be identical and first-step logits within torch.allclose(rtol=1e-4, atol=1e-5).
Exit 77 (skipped) when torch/transformers cannot be imported.
"""
import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import hf_reference  # noqa: E402  (imports torch)
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"skipping: {e}")
    sys.exit(77)


def main():
    binary, fixtures = sys.argv[1], sys.argv[2]
    rng = random.Random(1234)
    failures = 0
    checked = 0
    for name in sorted(os.listdir(fixtures)):
        model_dir = os.path.join(fixtures, name)
        if not os.path.exists(os.path.join(model_dir, "expected.json")):
            continue
        vocab = json.load(open(os.path.join(model_dir, "expected.json")))["cases"][0]["first_logits"]
        model, eos, pad = hf_reference.load_model(model_dir)
        for _ in range(2):
            prompt = [rng.randrange(len(vocab)) for _ in range(rng.randint(1, 12))]
            want = hf_reference.generate(model, prompt, 12, 0, eos, pad)
            run = subprocess.run([binary, "generate", "--model", model_dir, "--input-ids",
                                  ",".join(map(str, prompt)), "--max-new-tokens", "12", "--json"],
                                 capture_output=True, text=True, timeout=120)
            checked += 1
            if run.returncode != 0:
                print(f"FAIL {name} {prompt}: exit {run.returncode}: {run.stderr}")
                failures += 1
                continue
            got = json.loads(run.stdout)
            worst = max(abs(a - b) - 1e-4 * abs(b) for a, b in zip(got["first_logits"], want["first_logits"]))
            if got["output_ids"] != want["output_ids"] or worst > 1e-5 or got["finish_reason"] != want["finish_reason"]:
                print(f"FAIL {name} {prompt}: glmserve {got['output_ids']} {got['finish_reason']} "
                      f"transformers {want['output_ids']} {want['finish_reason']} logit excess {worst:.3g}")
                failures += 1
            else:
                print(f"ok   {name} prompt={prompt} ids={got['output_ids']}")
    print(f"{checked - failures}/{checked} prompts identical to transformers")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
