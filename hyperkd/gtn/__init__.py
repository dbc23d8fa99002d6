"""Generalised teacher networks (GTN, Binici et al.): a supernet of student architectures
(``hyperkd.gtn.supernet``) grafted onto the teacher (``hyperkd.gtn.graft``) and trained with it
(``hyperkd.gtn.train``); SFTN is the case of one fixed student."""
from hyperkd.gtn.supernet import Supernet, sample_students

__all__ = ["Supernet", "sample_students"]
