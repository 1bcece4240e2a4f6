"""CloudTaser S3 encryption proxy, as the mitmproxy script ``python -m cloudtaser_s3 proxy``
hands to mitmdump (and ``web`` to mitmweb). It sits in a folder of its own because mitmproxy
puts a script's folder on sys.path."""

from cloudtaser_s3.addon import CloudTaser

addons = [CloudTaser()]
