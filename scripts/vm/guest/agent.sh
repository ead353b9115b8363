#!/bin/sh
# The agent of the virtual-machine tests. Its content's `behaviour` file says what it
# does: "run" (runs until stopped), "panic" (crashes the kernel two seconds after it
# starts), "panic-after-N" (the same after N seconds).
behaviour=$(cat "$1/behaviour")
case $behaviour in
panic) delay=2 ;;
panic-after-*) delay=${behaviour#panic-after-} ;;
*) while sleep 3600; do :; done; exit 3 ;;
esac
echo "agent: content $BACKSTOP_CONTENT_VERSION crashes the kernel in $delay s"
sleep "$delay"
echo c > /proc/sysrq-trigger
