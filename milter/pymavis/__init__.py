"""pymavis: a milter content filter in the spirit of amavisd-new."""

__version__ = "0.1.0"
