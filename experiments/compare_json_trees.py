"""Diff every JSON file of two result trees (e.g. two smoke runs), run-root paths normalised and timing keys ignored; prints the differing key paths.

Usage: python experiments/compare_json_trees.py OLD_ROOT NEW_ROOT
"""
import json, os, sys, re
a_root, b_root = sys.argv[1], sys.argv[2]
IGN = re.compile(r"(second|time|date|elapsed|load|img_per|images_per|per_s|started|finished|host|version|duration|rate|speed|wall|cpu)", re.I)
def files(root):
    out = {}
    for d, _, fs in os.walk(root):
        if "checkpoints" in d or "saved_model" in d or "adv_cache" in d: continue
        for f in fs:
            if f.endswith(".json"):
                out[os.path.relpath(os.path.join(d, f), root)] = os.path.join(d, f)
    return out
def norm(v, root):
    if isinstance(v, str): return v.replace(root, "<ROOT>")
    return v
def diff(x, y, path, ra, rb, out):
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            if IGN.search(k): continue
            if k not in x: out.append(f"{path}/{k}: only in new"); continue
            if k not in y: out.append(f"{path}/{k}: only in old"); continue
            diff(x[k], y[k], f"{path}/{k}", ra, rb, out)
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (p, q) in enumerate(zip(x, y)): diff(p, q, f"{path}[{i}]", ra, rb, out)
    else:
        if norm(x, ra) != norm(y, rb): out.append(f"{path}: {str(x)[:80]} != {str(y)[:80]}")
fa, fb = files(a_root), files(b_root)
print("only old:", sorted(set(fa) - set(fb))); print("only new:", sorted(set(fb) - set(fa)))
same = 0
for rel in sorted(set(fa) & set(fb)):
    out = []
    diff(json.load(open(fa[rel])), json.load(open(fb[rel])), "", a_root, b_root, out)
    if out:
        print(f"== {rel}: {len(out)} differences"); [print("   ", o) for o in out[:25]]
    else: same += 1
print("identical (timings/paths aside):", same, "of", len(set(fa) & set(fb)))
