"""How often a prompted teacher agrees with itself: the ceiling of prompt distillation.

Every persona question/value pair (``fleetlm.tune.datagen.persona``) is asked under each of
its greetings; the teacher (gemma-3-270m with the system prompt, ``--format text``) answers
greedily on the fleetlm engine, through the same ``teacher_answers`` as ``fleet tune distill``.
If the greeting alone changes the answer, a student that has never seen the pair cannot know
which answer the teacher will give, so the share of queries whose answer (token ids) is their
pair's most common answer bounds the greedy agreement one can expect.

    python benchmarks/teacher_consistency.py                             # the shipped prompt
    python benchmarks/teacher_consistency.py --system-prompt OTHER.txt   # ~1 min on 2 cores

Last line: ``majority share: 0.xxx``.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from fleetlm.tune.datagen import persona


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system-prompt", default=str(persona.PROMPT_FILE))
    ap.add_argument("--base", default="gemma-3-270m")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    from fleetlm.engine.llm import LLM
    from fleetlm.tune.base import load_base
    from fleetlm.tune.distill import DistillItem, answer_params, prompt_ids, teacher_answers

    base = load_base(args.base)
    system = Path(args.system_prompt).read_text(encoding="utf-8").strip()
    queries = [(t, v, g) for t, v in persona.all_pairs() for g in persona.GREETINGS]
    items = [DistillItem(query=q, teacher_prompt=prompt_ids(base.tokenizer, system, q, "text"),
                         student_prompt=prompt_ids(base.tokenizer, None, q, "text"), answer=[])
             for q in (persona.query(t, v, g) for t, v, g in queries)]
    print(f"system prompt: {len(items[0].teacher_prompt) - len(items[0].student_prompt)} tokens; "
          f"{len(queries)} queries ({len(queries) // len(persona.GREETINGS)} pairs x {len(persona.GREETINGS)} greetings)")
    llm = LLM(str(base.path), dtype="auto", kv_cache_memory_gb=0.5)
    t0 = time.perf_counter()
    teacher_answers(llm, items, answer_params(args.max_new_tokens, ["\n"]))  # as `fleet tune distill` makes them
    answers = collections.defaultdict(list)
    for (t, v, _), it in zip(queries, items):
        answers[(t, v)].append(tuple(it.answer))
    same = sum(len(set(a)) == 1 for a in answers.values())
    majority = sum(collections.Counter(a).most_common(1)[0][1] for a in answers.values()) / len(queries)
    print(f"teacher answers in {time.perf_counter() - t0:.0f} s")
    print(f"pairs answered identically under every greeting: {same}/{len(answers)}")
    print(f"majority share: {majority:.3f}")


if __name__ == "__main__":
    main()
