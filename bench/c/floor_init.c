/* The floor of bench/boot.py: an init that only prints a marker on the console.
 * Same kernel and machine as the real guest, a bare initramfs holding just this (static)
 * binary; the time to its marker is what booting costs before any userspace work. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	struct timespec ts;
	int fd = open("/dev/console", O_WRONLY);

	clock_gettime(CLOCK_BOOTTIME, &ts);
	dprintf(fd < 0 ? 1 : fd, "\nfloor-init: uptime %ld.%03ld s\nVIOMMU-FLOOR-READY\n",
		(long)ts.tv_sec, ts.tv_nsec / 1000000);
	for (;;)
		pause();
}
