/* Baseline for bench/driver_map_unmap.py: IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP of one page
 * (and a trivial IOMMU_OPTION get) in a loop, on an IOAS with a mock device attached.
 * Built statically on the host, run in the guest.  Prints "name: nanoseconds" lines. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, 0x87)
#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, 0x80 + 32)
#define MAP_FIXED_IOVA 1
#define MAP_WRITEABLE 2
#define MAP_READABLE 4
#define MOCK_APERTURE_START (1UL << 24)

struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct iommu_ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct iommu_option { uint32_t size, option_id; uint16_t op, reserved; uint32_t object_id; uint64_t val64; };
struct iommu_test_cmd { uint32_t size, op, id, reserved; uint32_t out[12]; uint32_t last, pad; };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 20000;
	int domain = argc > 2 ? atoi(argv[2]) : 1;
	long page = sysconf(_SC_PAGESIZE);
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	struct iommu_test_cmd mock = { .size = sizeof(mock), .op = 2 };
	struct iommu_option opt = { .size = sizeof(opt), .op = 1 };
	uint64_t t0, t1;
	void *buf;
	int fd;

	fd = open("/dev/iommu", O_RDWR);
	if (fd < 0 || ioctl(fd, IOMMU_IOAS_ALLOC, &alloc))
		return perror("iommufd"), 1;
	mock.id = alloc.out_ioas_id;
	if (domain && ioctl(fd, IOMMU_TEST_CMD, &mock))
		return perror("mock domain"), 1;
	buf = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED)
		return perror("mmap"), 1;
	for (int pass = 0; pass < 2; pass++) {
		t0 = now_ns();
		for (long i = 0; i < n; i++) {
			struct iommu_ioas_map map = {
				.size = sizeof(map), .ioas_id = alloc.out_ioas_id,
				.flags = MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE,
				.user_va = (uintptr_t)buf, .length = page, .iova = MOCK_APERTURE_START,
			};
			struct iommu_ioas_unmap unmap = {
				.size = sizeof(unmap), .ioas_id = alloc.out_ioas_id,
				.iova = MOCK_APERTURE_START, .length = page,
			};
			if (ioctl(fd, IOMMU_IOAS_MAP, &map) || ioctl(fd, IOMMU_IOAS_UNMAP, &unmap))
				return perror("map/unmap"), 1;
		}
		t1 = now_ns();
	}
	printf("c_map_unmap_ns: %.1f\n", (double)(t1 - t0) / n);
	t0 = now_ns();
	for (long i = 0; i < n; i++)
		if (ioctl(fd, IOMMU_OPTION, &opt))
			return perror("option"), 1;
	t1 = now_ns();
	printf("c_option_ns: %.1f\n", (double)(t1 - t0) / n);
	return 0;
}
