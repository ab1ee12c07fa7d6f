"""What was measured and did not help, kept so that those measurements can be run again (docs/results.md,
"What did not help"). The default run never imports this package: each setting that reaches it is off by
default, and the code that reads the setting imports it only when it is on (tests/test_codebase.py checks both).

- nullspace.py: LoRA kept out of the input directions the guard's text uses (`null_space`)
- dynamic.py: loss weights from each step's semantic distances (`weighting dynamic`)
- margin.py: a guard term on the base model's lead over its runners-up (`guard_margin`)
- siblings.py: neighbour anchors whose subjects are of the edited subject's kind (`guard_anchors siblings`)
"""
