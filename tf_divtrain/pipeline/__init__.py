"""The reproduction pipeline: presets as data (:mod:`.presets`), their stages and staleness rules
(:mod:`.plan`), one runner that logs and times each stage (:mod:`.runner`), and the command line
``python -m tf_divtrain.pipeline PRESET [--only=STAGE] [--dry-run]`` (:mod:`.cli`), which
``run_all.sh`` calls. No TensorFlow is loaded here: every stage is a subprocess."""
