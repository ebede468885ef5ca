"""Block noise at 768p sizes: the vectorised draw vs the official per-block MultivariateNormal loop.

Run: .venv/bin/python -m bench.block_noise   (prints a Markdown table; ratios are measured in one run)
"""

import time

import torch

from pyramid_flow.noise import OFFICIAL_BLOCK_FACTOR, OfficialNoise, SeededNoise

CPU = torch.device("cpu")
SHAPES = {  # one unit's stage-1 and stage-2 transitions at 1280x768 (latent 96x160)
    "768p stage 1 (48x80)": (1, 16, 1, 48, 80),
    "768p stage 2 (96x160)": (1, 16, 1, 96, 160),
}


def per_block_loop(shape) -> torch.Tensor:
    b, c, t, h, w = shape
    distribution = torch.distributions.MultivariateNormal(torch.zeros(4), scale_tril=OFFICIAL_BLOCK_FACTOR)
    return torch.stack([distribution.sample() for _ in range(b * c * t * (h // 2) * (w // 2))])


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(2)
    print("| shape | blocks | per-block loop (official) | chunked official stream | vectorised (default) | speed-up vs loop |")
    print("|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        blocks = shape[1] * (shape[3] // 2) * (shape[4] // 2)
        loop = best_of(lambda: per_block_loop(shape), 2)
        official = best_of(lambda: OfficialNoise(0).block_noise(shape, 1, 2, CPU, torch.float32), 3)
        vectorised = best_of(lambda: SeededNoise(0).block_noise(shape, 1, 2, CPU, torch.float32), 5)
        print(f"| {name} | {blocks} | {loop * 1000:.0f} ms | {official * 1000:.0f} ms | {vectorised * 1000:.2f} ms | {loop / vectorised:.0f}x |")


if __name__ == "__main__":
    main()
