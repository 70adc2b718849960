/** Every driver blkio knows, for a BlockLayer to look up by name. */
import type { BlockDriver } from '../block/driver.js';
import { blkdebugDriver } from './blkdebug.js';
import { blkreplayDriver } from './blkreplay.js';
import { blkverifyDriver } from './blkverify.js';
import { compressDriver } from './compress.js';
import { copyOnReadDriver } from './copy-on-read.js';
import { fileDriver, hostCdromDriver, hostDeviceDriver } from './file.js';
import { luksDriver } from './luks.js';
import { mirrorTopDriver } from './mirror-top.js';
import { nbdDriver } from './nbd.js';
import { nullAioDriver, nullCoDriver } from './null.js';
import { parallelsDriver } from './parallels.js';
import { preallocateDriver } from './preallocate.js';
import { qcowDriver } from './qcow.js';
import { qcow2Driver } from './qcow2/index.js';
import { quorumDriver } from './quorum.js';
import { rawDriver } from './raw.js';
import { throttleDriver } from './throttle.js';
import { vpcDriver } from './vpc.js';
import { vdiDriver } from './vdi.js';
import { vmdkDriver } from './vmdk/index.js';
import { qedDriver } from './qed/index.js';
import { vhdxDriver } from './vhdx/index.js';

export const allDrivers: ReadonlyArray<BlockDriver<any>> = [
  fileDriver, hostDeviceDriver, hostCdromDriver, nullCoDriver, nullAioDriver, rawDriver, copyOnReadDriver, mirrorTopDriver,
  throttleDriver, compressDriver, preallocateDriver,
  blkdebugDriver,
  blkverifyDriver,
  luksDriver,
  vpcDriver,
  quorumDriver,
  blkreplayDriver,
  nbdDriver,
  qcow2Driver,
  vdiDriver,
  vmdkDriver,
  qedDriver,
  parallelsDriver,
  qcowDriver,
  vhdxDriver,
];
