#!/usr/bin/python3
# An agent that tries to leave its sandbox. Each attempt prints one line to REPORT,
# "<attempt> refused <why>" or "<attempt> allowed <what>", then "done"; it then says
# READY=1 on its notify socket and sleeps.
# Usage: escape.py REPORT_DIRECTORY HOST_TCP_PORT STORE_LINK
# (STORE_LINK: one of its writable paths, a symlink to Backstop's state directory)
import ctypes, os, socket, sys, time

report_directory, port, store_link = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = []

def attempt(name, action):
    try:
        lines.append(f"{name} allowed {action()}")
    except OSError as error:
        lines.append(f"{name} refused {error.strerror or error}")
    except MemoryError:
        lines.append(f"{name} refused out of memory")

def write_outside():
    with open("/etc/backstop-escape", "w") as file:
        file.write("escaped\n")
    return "wrote /etc/backstop-escape"

def write_content():
    with open(os.path.join(os.environ["BACKSTOP_CONTENT"], "escape"), "w") as file:
        file.write("escaped\n")
    return "wrote into its content"

def read_inaccessible():
    return f"listed /root: {os.listdir('/root')[:3]}"

def gain_capability():
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_CAP_AMBIENT (47), PR_CAP_AMBIENT_RAISE (2), CAP_SYS_ADMIN (21)
    if libc.prctl(47, 2, 21, 0, 0) != 0:
        errno = ctypes.get_errno()
        os.setuid(0)  # the second way in; raises when it is refused too
        return f"setuid(0) after prctl failed with {os.strerror(errno)}"
    return "raised CAP_SYS_ADMIN"

def network():
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return f"connected to the host's 127.0.0.1:{port}"

def memory():
    block = bytearray(256 * 1024 * 1024)
    block[-1] = 1
    return "allocated 256 MiB"

def tasks():
    children = []
    try:
        for _ in range(64):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        return f"forked {len(children)} processes"
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror} after {len(children)} processes")
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)

def write_store_link():
    with open(os.path.join(store_link, "escape"), "w") as file:
        file.write("escaped\n")
    return f"wrote into Backstop's state directory through {store_link}"

def write_tmp():
    with open("/tmp/backstop-escape-tmp", "w") as file:
        file.write("allowed\n")
    return "wrote /tmp/backstop-escape-tmp"

def fill(directory):
    # 32 MiB: past the default tmp_size under memory_max = "64M" (16M), within an open one.
    path = os.path.join(directory, "backstop-fill")
    try:
        with open(path, "wb") as file:
            for _ in range(32):
                file.write(b"\0" * (1024 * 1024))
                file.flush()
        return f"wrote 32 MiB into {directory}"
    finally:
        if os.path.exists(path):
            os.unlink(path)

def own_directory():
    with open(os.path.join(report_directory, "scratch"), "w") as file:
        file.write("allowed\n")
    return "wrote its own directory"

attempt("write-outside", write_outside)
attempt("write-content", write_content)
attempt("write-store-link", write_store_link)
attempt("read-inaccessible", read_inaccessible)
attempt("gain-capability", gain_capability)
attempt("network", network)
attempt("memory", memory)
attempt("tasks", tasks)
attempt("write-own", own_directory)
attempt("write-tmp", write_tmp)
attempt("fill-tmp", lambda: fill("/tmp"))
attempt("fill-var-tmp", lambda: fill("/var/tmp"))
lines.append(f"identity uid={os.getuid()} gid={os.getgid()}")
with open(os.path.join(report_directory, "report.tmp"), "w") as file:
    file.write("\n".join(lines) + "\ndone\n")
os.rename(os.path.join(report_directory, "report.tmp"), os.path.join(report_directory, "report"))
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(3600)
