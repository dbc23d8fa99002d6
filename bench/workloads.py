"""Layer lists of real networks: the conv output shapes (C, H, W) on 32×32 CIFAR inputs."""
RESNET20 = [(16, 32, 32)] * 7 + [(32, 16, 16)] * 6 + [(64, 8, 8)] * 6
VGG19_BN = ([(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 4 + [(512, 4, 4)] * 4
            + [(512, 2, 2)] * 4)

NETWORKS = {"resnet20": RESNET20, "vgg19_bn": VGG19_BN}
