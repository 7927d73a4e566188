/*
 * nxerr.h - the status codes every native call of nxstore returns.
 *
 * Zero is success; failures are small negative numbers so that a call that
 * also returns a count can return either in one signed integer.
 */
#ifndef NX_NXERR_H
#define NX_NXERR_H

#define NX_OK 0
#define NX_ENOMEM (-1)   /* allocation failed; the state is unchanged unless stated */
#define NX_EINVAL (-2)   /* an argument is impossible (bad sizes, out-of-range values) */
#define NX_ECORRUPT (-3) /* input data violates the structure's invariants */

#endif /* NX_NXERR_H */
