"""Writes the demo's sample inputs and its environment zip into a local folder (no AWS calls; the demo uploads them).

    demo_samples.py OUT_DIR ENV_DIR COUNT   ->  OUT_DIR/inputs/<folder>/doc-NNN.txt and OUT_DIR/environment/demo-env.zip
"""
import os
import random
import sys
import zipfile

out, env_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(os.path.join(out, "environment"), exist_ok=True)
with zipfile.ZipFile(os.path.join(out, "environment", "demo-env.zip"), "w") as z:
    for root, _, files in os.walk(env_dir):
        for name in files:
            path = os.path.join(root, name)
            info = zipfile.ZipInfo.from_file(path, os.path.relpath(path, env_dir))
            with open(path, "rb") as f:
                z.writestr(info, f.read())
words = ("cloud fleet queue message bucket object worker spot instance file data result retry drain "
         "signal shutdown parallel swift curl sign request").split()
rng = random.Random(42)
for i in range(count):
    folder = ["reads", "samples/2026", "samples/2025"][i % 3]
    path = os.path.join(out, "inputs", folder, f"doc-{i:03d}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(rng.randint(20, 80))]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
