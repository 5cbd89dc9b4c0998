"""Training: the ConvNet (plain nn.Module), the LightningModule and load_checkpoint, the DataModule,
reports, scoring, fault tolerance, cluster environments and the MFCC baseline."""
