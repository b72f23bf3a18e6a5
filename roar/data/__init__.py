"""Datasets and datamodules: sources (built-in, registered or any LightningDataModule), seeded
splits, channel statistics, and ROAR/KAR masking on the device."""

from roar.data.datamodule import ImageDataModule
from roar.data.ranks import FreshRandomRanks, RankProvider
from roar.data.roar import RoarDataModule
from roar.data.sources import SOURCES, list_sources, register_source

__all__ = ["FreshRandomRanks", "ImageDataModule", "RankProvider", "RoarDataModule", "SOURCES", "list_sources", "register_source"]
