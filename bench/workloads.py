"""Layer lists of real networks: the conv output shapes (C, H, W) on 32×32 CIFAR inputs."""
import torch

RESNET20 = [(16, 32, 32)] * 7 + [(32, 16, 16)] * 6 + [(64, 8, 8)] * 6
VGG19_BN = ([(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 4 + [(512, 4, 4)] * 4
            + [(512, 2, 2)] * 4)

NETWORKS = {"resnet20": RESNET20, "vgg19_bn": VGG19_BN}


def features(network: str, batch: int, device: torch.device):
    """Seeded random student features (requiring grad) and teacher features of one network."""
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(batch, *s, generator=gen).to(device).requires_grad_() for s in NETWORKS[network]]
    teacher = [torch.randn(batch, *s, generator=gen).to(device) for s in NETWORKS[network]]
    return student, teacher
