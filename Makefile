# hotplugd: build, install, uninstall, check.
#
#   make                          build the static binaries (release) into build/
#   make install                  install into PREFIX (default /usr/local), config into
#                                 /etc/hotplugd (never overwriting a file there), shell
#                                 completions for bash, zsh and fish, the rules that
#                                 mount or configure the network only as examples in
#                                 PKGDATADIR/examples/rules.d; it
#                                 does not build, so `sudo make install` never runs
#                                 cargo as root: run `make` first
#   make install DESTDIR=/tmp/pkg PREFIX=/usr      staged install, as packagers do
#   make install BUILDDIR=DIR     install the binaries found in DIR (e.g. a debug build)
#   make CARGO_TARGET=TRIPLE      build for another installed target (default: the host's)
#   make uninstall                remove what install put there (config files only if
#                                 unchanged)
#   make check                    scripts/test.sh: every test
#
# The binaries are linked statically (scripts/cargo-static, for the host's own target
# triple), so the shim runs in an initramfs without a C library. Paths inside the installed units, init scripts and
# example rules are rewritten from the default /usr/local ones to SBINDIR, PKGLIBEXECDIR
# and PKGDATADIR.

PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
LIBEXECDIR ?= $(PREFIX)/libexec
PKGLIBEXECDIR ?= $(LIBEXECDIR)/hotplugd
DATADIR ?= $(PREFIX)/share
PKGDATADIR ?= $(DATADIR)/hotplugd
MANDIR ?= $(DATADIR)/man
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
DOCDIR ?= $(DATADIR)/doc/hotplugd
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
# The daemon's default config is /etc/hotplugd/hotplugd.toml whatever PREFIX is.
SYSCONFDIR ?= /etc
CONFDIR = $(SYSCONFDIR)/hotplugd

CARGO ?= cargo
RUSTC ?= rustc
CARGOFLAGS ?=
# `make PROFILE=dev` builds and installs the debug binaries.
PROFILE ?= release
# The host's own triple, unless told otherwise: nothing here assumes x86_64 or glibc.
# Deferred (=), so `make install` never needs rustc.
CARGO_TARGET ?= $(shell $(RUSTC) -vV | $(SED) -n 's/^host: //p')
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
CARGO_OUT = $(TARGET_DIR)/$(CARGO_TARGET)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
# `make` copies the binaries here, a path that names no triple; install takes them
# from here.
BUILDDIR ?= build

INSTALL ?= install
SED ?= sed

BINS = hotplug hotplugd hotplugctl
MAN5 = man/hotplugd.toml.5
MAN7 = man/hotplugd.7
MAN8 = man/hotplug.8 man/hotplugd.8 man/hotplugctl.8
UNITS = contrib/systemd/hotplugd.service contrib/systemd/hotplugd.socket \
	contrib/systemd/hotplugd-trigger.service contrib/systemd/hotplugd-settle.service
HANDLERS = contrib/handlers/blkid-import contrib/handlers/devperms contrib/handlers/input-import \
	contrib/handlers/netif contrib/handlers/usb-mount
CONFIGS = config/hotplugd.toml contrib/handlers/devperms.conf
# Rules that act on hardware by themselves (mount USB disks, bring interfaces up and
# run DHCP) are not switched on by an install: they go to PKGDATADIR/examples/rules.d,
# to copy or link into CONFDIR/rules.d. The rest load modules, set device node modes
# and log, what a hotplug helper is expected to do. The importers (blkid, input) only
# read, but they add a process to every block and input event: examples too.
EXAMPLE_RULES = config/rules.d/40-blkid.toml config/rules.d/41-input.toml \
	config/rules.d/50-net.toml config/rules.d/60-usb-disk.toml
RULES = $(filter-out $(EXAMPLE_RULES),$(wildcard config/rules.d/*.toml))
# Copied to PKGDATADIR for the admin to put in place (see contrib/README.md): each
# init system has its own home for them, and installing them there unasked would
# change how the next boot goes.
SHARE_EXEC = contrib/openrc/hotplugd contrib/sysvinit/hotplugd \
	contrib/runit/hotplugd/run contrib/runit/hotplugd/check \
	contrib/runit/hotplugd/finish contrib/runit/hotplugd/log/run \
	contrib/s6/hotplugd/run \
	contrib/initramfs-tools/hooks/hotplugd \
	contrib/initramfs-tools/scripts/init-premount/hotplugd \
	contrib/initramfs-tools/scripts/init-bottom/hotplugd
SHARE_DATA = contrib/README.md contrib/openrc/hotplugd.confd \
	contrib/sysvinit/hotplugd.default \
	contrib/s6/hotplugd/notification-fd contrib/s6/hotplugd/type \
	contrib/initramfs-tools/hotplugd.toml config/default.toml

# Rewrites the default install paths in a file to the configured ones.
SUBST = $(SED) -e 's|/usr/local/libexec/hotplugd|$(PKGLIBEXECDIR)|g' \
	-e 's|/usr/local/share/hotplugd|$(PKGDATADIR)|g' \
	-e 's|/usr/local/lib/systemd/system|$(SYSTEMDUNITDIR)|g' \
	-e 's|/usr/local/sbin/|$(SBINDIR)/|g'

.PHONY: all build install install-bin install-man install-completions install-config \
	install-contrib uninstall check clean

all: build

# A copy, not a link: install(1) and the benchmarks want the bytes, and the copy stays
# what was built even while cargo rebuilds.
build:
	@test -n "$(CARGO_TARGET)" || { echo "no target triple: is rustc installed?" >&2; exit 1; }
	CARGO="$(CARGO)" RUSTC="$(RUSTC)" CARGO_TARGET="$(CARGO_TARGET)" \
		scripts/cargo-static build --profile $(PROFILE) $(CARGOFLAGS) --bins
	$(INSTALL) -d $(BUILDDIR)
	@set -e; for b in $(BINS); do cp -f $(CARGO_OUT)/$$b $(BUILDDIR)/$$b.tmp; \
		mv -f $(BUILDDIR)/$$b.tmp $(BUILDDIR)/$$b; done

install: install-bin install-man install-completions install-config install-contrib

install-bin:
	@for b in $(BINS); do \
		test -x $(BUILDDIR)/$$b || { echo "$(BUILDDIR)/$$b is missing: run make first" >&2; exit 1; }; \
	done
	$(INSTALL) -d $(DESTDIR)$(SBINDIR)
	$(INSTALL) -m 0755 $(addprefix $(BUILDDIR)/,$(BINS)) $(DESTDIR)$(SBINDIR)/

# The pages name the default paths; they are rewritten like the other files.
install-man:
	$(INSTALL) -d $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(MANDIR)/man8
	@set -e; for f in $(MAN5) $(MAN7) $(MAN8); do \
		sec=$${f##*.}; \
		$(SUBST) $$f > $(DESTDIR)$(MANDIR)/man$$sec/$${f##*/}; \
		chmod 0644 $(DESTDIR)$(MANDIR)/man$$sec/$${f##*/}; \
	done

# Shell completions come from the built hotplugctl itself, so they always match its
# commands and options (a hidden `hotplugctl completions SHELL` prints them).
install-completions: install-bin
	$(INSTALL) -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	$(BUILDDIR)/hotplugctl completions bash > $(DESTDIR)$(BASHCOMPDIR)/hotplugctl
	$(BUILDDIR)/hotplugctl completions zsh > $(DESTDIR)$(ZSHCOMPDIR)/_hotplugctl
	$(BUILDDIR)/hotplugctl completions fish > $(DESTDIR)$(FISHCOMPDIR)/hotplugctl.fish
	chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/hotplugctl $(DESTDIR)$(ZSHCOMPDIR)/_hotplugctl \
		$(DESTDIR)$(FISHCOMPDIR)/hotplugctl.fish

# Configuration: installed only where no file of that name exists, so an admin's
# edits survive `make install`. The shipped versions are always in PKGDATADIR/config.
install-config:
	$(INSTALL) -d -m 0755 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/rules.d \
		$(DESTDIR)$(PKGDATADIR)/config/rules.d $(DESTDIR)$(PKGDATADIR)/examples/rules.d
	@set -e; for f in $(EXAMPLE_RULES); do \
		$(SUBST) $$f > $(DESTDIR)$(PKGDATADIR)/examples/rules.d/$${f##*/}; \
		chmod 0644 $(DESTDIR)$(PKGDATADIR)/examples/rules.d/$${f##*/}; \
	done
	@set -e; for f in $(CONFIGS) $(RULES); do \
		case $$f in config/rules.d/*) rel=rules.d/$${f##*/} ;; *) rel=$${f##*/} ;; esac; \
		$(SUBST) $$f > $(DESTDIR)$(PKGDATADIR)/config/$$rel.tmp; \
		chmod 0644 $(DESTDIR)$(PKGDATADIR)/config/$$rel.tmp; \
		mv $(DESTDIR)$(PKGDATADIR)/config/$$rel.tmp $(DESTDIR)$(PKGDATADIR)/config/$$rel; \
		if [ -e $(DESTDIR)$(CONFDIR)/$$rel ]; then \
			echo "keeping $(DESTDIR)$(CONFDIR)/$$rel (the shipped one is in $(PKGDATADIR)/config)"; \
		else \
			echo "installing $(DESTDIR)$(CONFDIR)/$$rel"; \
			$(INSTALL) -m 0644 $(DESTDIR)$(PKGDATADIR)/config/$$rel $(DESTDIR)$(CONFDIR)/$$rel; \
		fi; \
	done

install-contrib:
	$(INSTALL) -d $(DESTDIR)$(PKGLIBEXECDIR) $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(DOCDIR)
	@set -e; for f in $(HANDLERS); do \
		$(SUBST) $$f > $(DESTDIR)$(PKGLIBEXECDIR)/$${f##*/}; \
		chmod 0755 $(DESTDIR)$(PKGLIBEXECDIR)/$${f##*/}; \
	done
	@set -e; for f in $(UNITS); do \
		$(SUBST) $$f > $(DESTDIR)$(SYSTEMDUNITDIR)/$${f##*/}; \
		chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$${f##*/}; \
	done
	@set -e; for f in $(SHARE_EXEC) $(SHARE_DATA); do \
		rel=$${f#contrib/}; \
		$(INSTALL) -d $(DESTDIR)$(PKGDATADIR)/$$(dirname $$rel); \
		$(SUBST) $$f > $(DESTDIR)$(PKGDATADIR)/$$rel; \
		case " $(SHARE_EXEC) " in *" $$f "*) mode=0755 ;; *) mode=0644 ;; esac; \
		chmod $$mode $(DESTDIR)$(PKGDATADIR)/$$rel; \
	done
	$(INSTALL) -m 0644 README.md $(DESTDIR)$(DOCDIR)/

uninstall:
	rm -f $(addprefix $(DESTDIR)$(SBINDIR)/,$(BINS))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man5/,$(notdir $(MAN5)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man7/,$(notdir $(MAN7)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(MAN8)))
	rm -f $(DESTDIR)$(BASHCOMPDIR)/hotplugctl $(DESTDIR)$(ZSHCOMPDIR)/_hotplugctl \
		$(DESTDIR)$(FISHCOMPDIR)/hotplugctl.fish
	rm -f $(addprefix $(DESTDIR)$(SYSTEMDUNITDIR)/,$(notdir $(UNITS)))
	rm -f $(addprefix $(DESTDIR)$(PKGLIBEXECDIR)/,$(notdir $(HANDLERS)))
	rm -f $(DESTDIR)$(DOCDIR)/README.md
	@# Config files go only if they are still the shipped ones.
	@set -e; for f in $(CONFIGS) $(RULES); do \
		case $$f in config/rules.d/*) rel=rules.d/$${f##*/} ;; *) rel=$${f##*/} ;; esac; \
		c=$(DESTDIR)$(CONFDIR)/$$rel; s=$(DESTDIR)$(PKGDATADIR)/config/$$rel; \
		if [ -e $$c ] && [ -e $$s ] && cmp -s $$c $$s; then rm -f $$c; \
		elif [ -e $$c ]; then echo "keeping $$c (changed)"; fi; \
	done
	rm -rf $(DESTDIR)$(PKGDATADIR)
	-rmdir $(DESTDIR)$(CONFDIR)/rules.d $(DESTDIR)$(CONFDIR) $(DESTDIR)$(PKGLIBEXECDIR) \
		$(DESTDIR)$(DOCDIR) 2>/dev/null

check:
	scripts/test.sh

clean:
	$(CARGO) clean
	rm -rf build
