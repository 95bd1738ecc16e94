/* Process-wide settings of the Cython kernels, shared by every module of kernels/ (the .pyx files).
 *
 * The one instance lives in fastgd._cython.runtime (runtime.pyx); every other module reaches it
 * through the capsule FASTGD_RUNTIME_CAPSULE (see _parallel.pxd). OpenMP's own thread count
 * (omp_set_num_threads) is per calling thread, so it cannot carry fastgd.set_num_threads into
 * threads a user starts later; this struct can.
 */
#ifndef FASTGD_RUNTIME_H
#define FASTGD_RUNTIME_H

typedef struct {
    int num_threads;    /* threads of a parallel kernel; 0: the OpenMP default (omp_get_max_threads) */
    int pool_started;   /* a kernel of this process has started an OpenMP team (libgomp pool) */
    int forked_serial;  /* this process was forked after a pool started: never start a team again */
} fastgd_runtime_t;

#define FASTGD_RUNTIME_MODULE "fastgd._cython.runtime"
#define FASTGD_RUNTIME_CAPSULE "fastgd._cython.runtime._RUNTIME"

#endif
