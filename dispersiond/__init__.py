"""dispersiond: selective encryption, fragmentation and dispersion of health records."""

__version__ = "0.1.0"
