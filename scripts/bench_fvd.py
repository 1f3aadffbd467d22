"""Time FVD on this machine: seconds per 100 videos of 16x64x64, printed as JSON.

    python3 -m scripts.bench_fvd --weights ../shared/weights/i3d_k400/i3d_kinetics400_tfhub.pt

Times I3D feature extraction (resize to 224, batched) on ``--num-videos`` random videos,
scales it to 100 videos, and times the Fréchet distance of two 100-video feature sets.
Defaults to one CPU thread, as the tests run.
"""
import argparse
import json
import os
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default=None, help='I3D weight file (default: $FAR_I3D_WEIGHTS or the cache)')
    parser.add_argument('--num-videos', type=int, default=100, help='videos to time (the result is per 100)')
    parser.add_argument('--batch-size', type=int, default=32, help='videos per I3D forward')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    import torch

    from far.metrics import FVD, frechet_distance

    torch.set_num_threads(args.threads)
    fvd = FVD(args.weights, batch_size=args.batch_size)
    videos = torch.rand(args.num_videos, 16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fvd.features(videos[:1], args.device)  # warm-up: first-call allocations and kernel selection

    start = time.perf_counter()
    features = fvd.features(videos, args.device)
    if args.device.startswith('cuda'):
        torch.cuda.synchronize()
    extraction = time.perf_counter() - start

    sets = torch.randn(2, 100, features.shape[-1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = time.perf_counter()
    frechet_distance(sets[0], sets[1])
    distance = time.perf_counter() - start

    print(json.dumps({
        'seconds_per_100_videos': round(extraction * 100 / args.num_videos, 2),
        'frechet_distance_seconds': round(distance, 3),
        'videos_timed': args.num_videos,
        'video_shape': [16, 3, 64, 64],
        'batch_size': args.batch_size,
        'threads': args.threads,
        'device': args.device,
        'torch': torch.__version__,
    }))


if __name__ == '__main__':
    main()
