"""CloudTaser S3 encryption proxy, as a mitmproxy script:

    mitmdump -s addon/cloudtaser.py

Configuration comes from the environment (see README.md). The logic lives in the installed
``cloudtaser_s3`` package; this file only hands mitmproxy the addon.
"""

from cloudtaser_s3.entry.cloudtaser import addons

__all__ = ["addons"]
