# Backstop: `make demo` shows the main job end to end, `make test` runs every test.
# Both install the Debian packages they need first (as root, with apt-get).

PREFIX ?= /usr
DESTDIR ?=
SBINDIR = $(PREFIX)/sbin
BINDIR = $(PREFIX)/bin
LIBEXECDIR = $(PREFIX)/libexec/backstop
UNITDIR = $(PREFIX)/lib/systemd/system
TMPFILESDIR = $(PREFIX)/lib/tmpfiles.d
SYSUSERSDIR = $(PREFIX)/lib/sysusers.d
CATALOGDIR = $(PREFIX)/lib/systemd/catalog
MANDIR = $(PREFIX)/share/man
BASHCOMPLETIONDIR = $(PREFIX)/share/bash-completion/completions
ZSHCOMPLETIONDIR = $(PREFIX)/share/zsh/vendor-completions
FISHCOMPLETIONDIR = $(PREFIX)/share/fish/vendor_completions.d
DATADIR = $(PREFIX)/share/backstop
DOCDIR = $(PREFIX)/share/doc/backstop
SYSCONFDIR = /etc

# Packages the build needs, and the ones the tests use as real parts.
BUILD_PACKAGES = libsystemd-dev libarchive-dev pkg-config bubblewrap binutils
TEST_PACKAGES = clamav-daemon clamav clamdscan crowdsec fail2ban usbguard systemd systemd-container python3 groff-base \
	qemu-system-x86 qemu-utils mmdebstrap e2fsprogs gcc
BENCH_PACKAGES = python3-venv

# Agents with runner = "systemd" whose unit `make install` gives the sandbox drop-in of
# their [agent.sandbox] (backstopctl sandbox AGENT --drop-in), e.g. SANDBOX_AGENTS="clamd".
SANDBOX_AGENTS ?=

SWIFT ?= swift
DEBUG_BIN = $(shell $(SWIFT) build --show-bin-path 2>/dev/null)
RELEASE_FLAGS = -c release --static-swift-stdlib

.PHONY: all deps test-deps build demo test bench fuzz install clean

all: build

deps:
	@scripts/install-packages.sh $(BUILD_PACKAGES)

test-deps: deps
	@scripts/install-packages.sh $(TEST_PACKAGES)

build: deps
	$(SWIFT) build

demo: build
	scripts/demo.sh "$(DEBUG_BIN)"

# One debug build serves every test stage: the unit tests, then the integration
# tests that run the built binaries against real agents. The container tests boot
# systemd in systemd-nspawn with Backstop installed from a `make install` tree, whose
# binaries carry their Swift runtime (nothing in the container may come from /opt).
# The virtual-machine tests boot Debian 12 with a real kernel (QEMU, software emulation
# where KVM cannot boot it) from a base image built once from Debian packages and cached
# in .build-vm, with the same install tree. They run on their own, after the rest: software
# emulation takes a whole core, which would starve the timed waits of the other tests.
TEST_INSTALL_DIR = $(CURDIR)/.build-install
VM_CACHE_DIR = $(CURDIR)/.build-vm
test: test-deps
	$(SWIFT) build --build-tests
	rm -rf "$(TEST_INSTALL_DIR)"
	$(MAKE) install DESTDIR="$(TEST_INSTALL_DIR)"
	scripts/vm/build-base-image.sh "$(VM_CACHE_DIR)" >/dev/null
	BACKSTOP_BIN_DIR="$(DEBUG_BIN)" BACKSTOP_INSTALL_DIR="$(TEST_INSTALL_DIR)" $(SWIFT) test --skip-build --disable-xctest --skip VirtualMachineTests
	BACKSTOP_BIN_DIR="$(DEBUG_BIN)" BACKSTOP_INSTALL_DIR="$(TEST_INSTALL_DIR)" $(SWIFT) test --skip-build --disable-xctest --filter VirtualMachineTests

# Benchmarks of the release build, side by side with a minimal C supervisor (bench/floor.c,
# compiled by the benchmark), systemd (in a container, like the tests) and supervisord (from
# PyPI, in a virtualenv of its own). Prints the tables and writes them into docs/benchmarks.md.
# The tests run its --smoke subset on the debug build (BenchSmokeTests).
BENCH_DIR = $(CURDIR)/.build-bench
SUPERVISOR_VERSION = 4.3.0
bench: test-deps
	@scripts/install-packages.sh $(BENCH_PACKAGES)
	rm -rf "$(BENCH_DIR)/install"
	$(MAKE) install DESTDIR="$(BENCH_DIR)/install"
	[ -x "$(BENCH_DIR)/venv/bin/supervisord" ] || { /usr/bin/python3 -m venv "$(BENCH_DIR)/venv" && \
		"$(BENCH_DIR)/venv/bin/pip" install --quiet supervisor==$(SUPERVISOR_VERSION); }
	/usr/bin/python3 bench/bench.py --bin "$(shell $(SWIFT) build $(RELEASE_FLAGS) --show-bin-path)" \
		--install-tree "$(BENCH_DIR)/install" --supervisord "$(BENCH_DIR)/venv/bin/supervisord" \
		--markdown docs/benchmarks.md

# libFuzzer targets for the readers of untrusted input (Fuzz/): the configuration, the
# state files, control messages and bundles. Each runs FUZZ_SECONDS from the seed corpus
# in Fuzz/Corpus/<target>; what it learns goes to .build-fuzz/corpus/<target>, and an
# input that crashes it to .build-fuzz/artifacts/<target>/ (add it to Fuzz/Corpus/<target>,
# where the tests replay it). Inputs on which TOMLKit's parser aborts are contained by
# backstopd (it parses in a child first) and only reported; they belong in
# Fuzz/Aborts/configuration/. Leaks are not reported: TOMLKit 0.6.0 leaks a few C++
# objects per parse (the daemon parses its configuration once).
# `make fuzz FUZZ_TARGETS=bundle FUZZ_SECONDS=600` runs one target for ten minutes.
FUZZ_DIR = $(CURDIR)/.build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= configuration state control bundle
FUZZ_FLAGS = -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address -Xswiftc -use-ld=lld
fuzz: build
	cd Fuzz && $(SWIFT) build --scratch-path "$(FUZZ_DIR)" $(FUZZ_FLAGS)
	rm -rf "$(FUZZ_DIR)/artifacts"
	scripts/fuzz.sh "$(FUZZ_DIR)" $(FUZZ_SECONDS) "$(DEBUG_BIN)/backstopd" $(FUZZ_TARGETS)

install: deps
	$(SWIFT) build $(RELEASE_FLAGS)
	$(eval RELEASE_BIN := $(shell $(SWIFT) build $(RELEASE_FLAGS) --show-bin-path))
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(CATALOGDIR) $(DESTDIR)$(DATADIR)/examples $(DESTDIR)$(DOCDIR) \
		$(DESTDIR)$(SYSCONFDIR)/backstop $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(BASHCOMPLETIONDIR) $(DESTDIR)$(ZSHCOMPLETIONDIR) $(DESTDIR)$(FISHCOMPLETIONDIR)
	install -s -m 0755 $(RELEASE_BIN)/backstopd $(DESTDIR)$(SBINDIR)/backstopd
	install -s -m 0755 $(RELEASE_BIN)/backstopctl $(DESTDIR)$(BINDIR)/backstopctl
	install -s -m 0755 $(RELEASE_BIN)/backstop-demo-agent $(DESTDIR)$(LIBEXECDIR)/backstop-demo-agent
	sed 's|@SBINDIR@|$(SBINDIR)|g' systemd/backstopd.service > $(DESTDIR)$(UNITDIR)/backstopd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/backstopd.service
	install -m 0644 systemd/backstop.tmpfiles $(DESTDIR)$(TMPFILESDIR)/backstop.conf
	install -m 0644 systemd/backstop.sysusers $(DESTDIR)$(SYSUSERSDIR)/backstop.conf
	install -m 0644 systemd/backstop.catalog $(DESTDIR)$(CATALOGDIR)/backstop.catalog
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 docs/man/backstopctl.1 $(DESTDIR)$(MANDIR)/man1/backstopctl.1
	install -m 0644 docs/man/backstopd.8 $(DESTDIR)$(MANDIR)/man8/backstopd.8
	$(RELEASE_BIN)/backstopctl --generate-completion-script bash > $(DESTDIR)$(BASHCOMPLETIONDIR)/backstopctl
	$(RELEASE_BIN)/backstopctl --generate-completion-script zsh > $(DESTDIR)$(ZSHCOMPLETIONDIR)/_backstopctl
	$(RELEASE_BIN)/backstopctl --generate-completion-script fish > $(DESTDIR)$(FISHCOMPLETIONDIR)/backstopctl.fish
	@[ -n "$(DESTDIR)" ] || { journalctl --update-catalog && systemd-sysusers $(SYSUSERSDIR)/backstop.conf && \
		systemd-tmpfiles --create $(TMPFILESDIR)/backstop.conf; }
	cp -R examples/content $(DESTDIR)$(DATADIR)/examples/
	test -e $(DESTDIR)$(SYSCONFDIR)/backstop/backstop.toml || \
		install -m 0644 examples/backstop.toml $(DESTDIR)$(SYSCONFDIR)/backstop/backstop.toml
	for agent in $(SANDBOX_AGENTS); do \
		$(RELEASE_BIN)/backstopctl --config $(DESTDIR)$(SYSCONFDIR)/backstop/backstop.toml \
			sandbox "$$agent" --drop-in --install-root "$(DESTDIR)/" || exit 1; \
	done
	@[ -z "$(SANDBOX_AGENTS)" ] || [ -n "$(DESTDIR)" ] || systemctl daemon-reload

clean:
	$(SWIFT) package clean
	rm -rf .build-install .build-bench .build-fuzz .build-vm
