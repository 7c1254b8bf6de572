# Benchmarks (issue 6). Tests: bash scripts/test.sh; the main job: bash scripts/run.sh.
.PHONY: bench bench-full bench-env bench-results

bench:          ## CPU suite (a few minutes on 2 idle cores) -> benchmarks/RESULTS.md
	bash scripts/bench.sh

bench-full:     ## the same plus every implementation at F=32768
	BENCH_FULL=1 bash scripts/bench.sh

bench-env:      ## only the benchmark environment .venv-bench (peers + our package)
	bash scripts/bench_env.sh

bench-results:  ## regenerate benchmarks/RESULTS.md from benchmarks/results/*.json
	.venv-bench/bin/python -m benchmarks.results
