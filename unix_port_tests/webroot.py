# A throwaway static root for the lib/httpd.py tests: www/ with the files a test serves,
# and a secret file one level up that no request may ever reach.
import os


def name(prefix):
    """A fresh /tmp path, so parallel runs of the suite do not share files."""
    return "/tmp/%s_%d" % (prefix, os.urandom(1)[0] * 256 + os.urandom(1)[0])


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make(root, secret, files):
    """root/secret.txt and root/www/<path> for each (path, bytes) of files."""
    www = root + "/www"
    for d in (root, www, www + "/sub"):
        try:
            os.mkdir(d)
        except OSError:
            pass
    write(root + "/secret.txt", secret)
    for path, data in files:
        write(www + path, data)


def remove(path):
    for entry, kind, *_ in os.ilistdir(path):
        p = path + "/" + entry
        if kind == 0x4000:
            remove(p)
        else:
            os.remove(p)
    os.rmdir(path)
