"""The package: installed (importable from anywhere), and usable for models and samplers without video codecs."""
import subprocess
import sys

WITHOUT_CODECS = '''
import sys
sys.modules['av'] = sys.modules['imageio_ffmpeg'] = None  # as if they were not installed
import torch
import far
from far.models import FAR
from far.pipelines import FARPipeline
from far.metrics import PSNR

model = FAR(in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=1,
            axes_dims_rope=[4, 6, 6]).eval()
pipe = FARPipeline(transformer=model)
pipe.set_progress_bar_config(disable=True)
video = pipe.generate_latents(torch.zeros(1, 1, 4, 2, 2), torch.randn(1, 1, 4, 2, 2), num_inference_steps=2)
print(tuple(video.shape), float(PSNR()(video[None, :, :, :3], video[None, :, :, :3].clamp(0, 1)).mean()) > 0)
'''


def test_far_imports_from_any_folder_once_installed(tmp_path):
    result = subprocess.run([sys.executable, '-c', 'import far; print(far.__file__)'], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, 'far is not installed: python3 -m pip install -r requirements.txt\n' + result.stderr


def test_models_samplers_and_metrics_run_without_video_codecs(tmp_path):
    result = subprocess.run([sys.executable, '-c', WITHOUT_CODECS], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['(1,', '2,', '4,', '2,', '2)', 'True']
