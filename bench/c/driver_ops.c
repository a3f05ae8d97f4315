/* Baseline of bench/driver_ops.py: the iommufd operations the Python driver is timed on,
 * as bare ioctls, in the same guest and the same run.  Built statically on the host
 * against the real Linux 7.3 uAPI headers (linux/iommufd.h and the selftest header
 * iommufd_test.h), run in the guest; prints "name: nanoseconds-per-operation" lines.
 *
 * Operations (the best of two passes of N iterations each):
 *   map_unmap_4k / map_unmap_2m   IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP at a fixed IOVA
 *   hwpt_alloc_free               IOMMU_HWPT_ALLOC (paging, mock device) + IOMMU_DESTROY
 *   nested_alloc_free             IOMMU_HWPT_ALLOC (nested, selftest data) + IOMMU_DESTROY
 *   invalidate_1 / invalidate_64  IOMMU_HWPT_INVALIDATE of 1 / 64 selftest entries
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"

#define SZ_4K 4096UL
#define SZ_2M (2UL << 20)
#define IOVA (1UL << 24) /* MOCK_APERTURE_START */

static int fd;
static uint32_t ioas_id, dev_id, parent_id, nested_id;
static void *buf;
static struct iommu_hwpt_invalidate_selftest entries[64];

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void check(int ret, const char *what)
{
	if (ret) {
		fprintf(stderr, "%s: %s\n", what, strerror(errno));
		exit(1);
	}
}

static void map_unmap(unsigned long length)
{
	struct iommu_ioas_map map = {
		.size = sizeof(map), .ioas_id = ioas_id, .user_va = (uintptr_t)buf,
		.length = length, .iova = IOVA,
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
	};
	struct iommu_ioas_unmap unmap = {
		.size = sizeof(unmap), .ioas_id = ioas_id, .iova = IOVA, .length = length,
	};

	check(ioctl(fd, IOMMU_IOAS_MAP, &map), "IOMMU_IOAS_MAP");
	check(ioctl(fd, IOMMU_IOAS_UNMAP, &unmap), "IOMMU_IOAS_UNMAP");
}

static void map_unmap_4k(void) { map_unmap(SZ_4K); }
static void map_unmap_2m(void) { map_unmap(SZ_2M); }

static uint32_t hwpt_alloc(uint32_t pt_id, uint32_t flags, uint32_t data_type, void *data,
			   uint32_t data_len)
{
	struct iommu_hwpt_alloc cmd = {
		.size = sizeof(cmd), .flags = flags, .dev_id = dev_id, .pt_id = pt_id,
		.data_type = data_type, .data_len = data_len, .data_uptr = (uintptr_t)data,
	};

	check(ioctl(fd, IOMMU_HWPT_ALLOC, &cmd), "IOMMU_HWPT_ALLOC");
	return cmd.out_hwpt_id;
}

static void destroy(uint32_t id)
{
	struct iommu_destroy cmd = { .size = sizeof(cmd), .id = id };

	check(ioctl(fd, IOMMU_DESTROY, &cmd), "IOMMU_DESTROY");
}

static void hwpt_alloc_free(void)
{
	destroy(hwpt_alloc(ioas_id, 0, IOMMU_HWPT_DATA_NONE, NULL, 0));
}

static void nested_alloc_free(void)
{
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };

	destroy(hwpt_alloc(parent_id, 0, IOMMU_HWPT_DATA_SELFTEST, &data, sizeof(data)));
}

static void invalidate(uint32_t count)
{
	struct iommu_hwpt_invalidate cmd = {
		.size = sizeof(cmd), .hwpt_id = nested_id, .data_uptr = (uintptr_t)entries,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
		.entry_len = sizeof(entries[0]), .entry_num = count,
	};

	check(ioctl(fd, IOMMU_HWPT_INVALIDATE, &cmd), "IOMMU_HWPT_INVALIDATE");
	if (cmd.entry_num != count) {
		fprintf(stderr, "IOMMU_HWPT_INVALIDATE: %u of %u entries\n", cmd.entry_num, count);
		exit(1);
	}
}

static void invalidate_1(void) { invalidate(1); }
static void invalidate_64(void) { invalidate(64); }

static void timed(const char *name, void (*op)(void), long n)
{
	double best = 0;

	for (int pass = 0; pass < 2; pass++) {
		uint64_t t0 = now_ns();

		for (long i = 0; i < n; i++)
			op();
		double per = (double)(now_ns() - t0) / n;
		if (pass == 0 || per < best)
			best = per;
	}
	printf("%s: %.1f\n", name, best);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 2000;
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN };
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };

	fd = open("/dev/iommu", O_RDWR);
	check(fd < 0, "/dev/iommu");
	check(ioctl(fd, IOMMU_IOAS_ALLOC, &alloc), "IOMMU_IOAS_ALLOC");
	ioas_id = alloc.out_ioas_id;
	mock.id = ioas_id;
	check(ioctl(fd, IOMMU_TEST_CMD, &mock), "IOMMU_TEST_OP_MOCK_DOMAIN");
	dev_id = mock.mock_domain.out_idev_id;
	buf = mmap(NULL, SZ_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		   -1, 0);
	check(buf == MAP_FAILED, "mmap");
	parent_id = hwpt_alloc(ioas_id, IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_DATA_NONE, NULL, 0);
	nested_id = hwpt_alloc(parent_id, 0, IOMMU_HWPT_DATA_SELFTEST, &data, sizeof(data));
	for (int i = 0; i < 64; i++)
		entries[i].iotlb_id = i % (MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1);

	timed("map_unmap_4k", map_unmap_4k, n);
	timed("map_unmap_2m", map_unmap_2m, n / 4 ? n / 4 : 1);
	timed("hwpt_alloc_free", hwpt_alloc_free, n / 4 ? n / 4 : 1);
	timed("nested_alloc_free", nested_alloc_free, n / 4 ? n / 4 : 1);
	timed("invalidate_1", invalidate_1, n);
	timed("invalidate_64", invalidate_64, n / 4 ? n / 4 : 1);
	return 0;
}
